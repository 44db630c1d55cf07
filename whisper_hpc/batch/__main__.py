from whisper_hpc.batch.cli import main

raise SystemExit(main())
