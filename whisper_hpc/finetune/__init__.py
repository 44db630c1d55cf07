"""`whisper-finetune`: fine-tune a staged Whisper on a TSV of recordings, on one process or many.

    prepare MANIFEST --model NAME --output RUN_DIR   decode clips once, features and labels into RUN_DIR
    train RUN_DIR [--method lora|full] ...           a plain torch loop; torchrun for several ranks
    export RUN_DIR --name NAME                       merge LoRA, stage through whisper-models import

RUN_DIR holds run.json (base model, data checksum, clip counts), base/ (the base model as a
transformers folder), data/ (features and labels), checkpoints/ and train.lock. torch,
transformers and peft are imported inside the functions that need them, so `--help` is instant.
"""
