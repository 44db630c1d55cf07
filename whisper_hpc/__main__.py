from whisper_hpc.cli import main

raise SystemExit(main())
