from whisper_hpc.staging.cli import main

raise SystemExit(main())
