import sys

from whisper_hpc.finetune.cli import main

sys.exit(main())
