"""whisper-finetune's command line: prepare, train, export (see whisper_hpc/finetune/__init__.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from whisper_hpc import runtime
from whisper_hpc.errors import WhisperHpcError, entry_point, report

PROG = "whisper-finetune"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    from whisper_hpc.finetune.model import DEFAULT_TARGETS
    from whisper_hpc.finetune.train import OPTIMIZERS, PRECISIONS

    top = argparse.ArgumentParser(prog=PROG, description="Fine-tune a staged Whisper model on your recordings, "
                                  "on one process or many (torchrun), offline.")
    commands = top.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="decode clips once: features and labels into RUN_DIR")
    prepare.add_argument("manifest", type=Path, help="TSV audio<TAB>text[<TAB>language], paths relative to it; "
                         "a header line (e.g. Common Voice's path, sentence, locale) is read by column names")
    prepare.add_argument("--model", required=True, help="the staged base model (name or folder)")
    prepare.add_argument("--output", required=True, type=Path, help="the run directory to create")
    prepare.add_argument("--root", help="the model root (default: $WHISPER_MODELS, else the site configuration)")
    prepare.add_argument("--audio_column", help="the header's audio column (default: audio or path)")
    prepare.add_argument("--text_column", help="the header's text column (default: text or sentence)")
    prepare.add_argument("--language_column", help="the header's language column (default: language or locale)")
    prepare.add_argument("--language", help="language of clips without one (multilingual models)")
    prepare.add_argument("--eval_fraction", type=float, default=0.1, help="held out for eval WER (default 0.1)")

    train = commands.add_parser("train", help="train RUN_DIR (resumes from its newest complete checkpoint); "
                                "several ranks: start it with torchrun")
    train.add_argument("run_dir", type=Path)
    train.add_argument("--method", choices=("lora", "full"), default="lora")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--max_steps", type=positive, help="optimizer steps in all")
    length.add_argument("--epochs", type=float, help="passes over the training clips (default 1)")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for lora, 1e-5 for full)")
    train.add_argument("--batch_size", type=positive, default=8, help="clips per rank and micro-step (default 8)")
    train.add_argument("--grad_accum", type=positive, default=1, help="micro-steps per optimizer step (default 1)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=0, help="data order and LoRA initialisation (default 0)")
    train.add_argument("--save_every", type=int, default=100, help="checkpoint every N steps, and at the end")
    train.add_argument("--eval_every", type=int, default=0, help="eval WER every N steps (default: at the end only)")
    train.add_argument("--log_every", type=positive, default=10, help="a progress line every N steps")
    train.add_argument("--freeze_encoder", action="store_true", help="full: train the decoder only")
    train.add_argument("--lora_rank", type=positive, default=8)
    train.add_argument("--lora_alpha", type=positive, default=16)
    train.add_argument("--lora_targets", default=",".join(DEFAULT_TARGETS),
                       help="linear modules of the decoder's layers that get LoRA (default %(default)s: "
                       "self- and cross-attention and the MLP)")
    train.add_argument("--lora_encoder", action="store_true", help="LoRA on the encoder's layers too")
    train.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bf16 (else fp16) on a GPU, fp32 on CPU")

    export = commands.add_parser("export", help="merge LoRA and stage the model as ROOT/NAME for both engines")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--name", required=True, help="the new model's name in the model root")
    export.add_argument("--quantization", default="int8", choices=("int8", "float16", "float32"),
                        help="CTranslate2 weights (default int8)")
    export.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the newest complete one)")
    export.add_argument("--root", help="the model root (default: $WHISPER_MODELS, else the site configuration)")
    export.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    return top


def model_root(named: str | None) -> Path:
    from whisper_hpc.site import model_root as site_root

    return (Path(named) if named else site_root()).absolute()


def run_prepare(arguments) -> int:
    from whisper_hpc.finetune.manifest import Columns
    from whisper_hpc.finetune.prepare import PrepareOptions, prepare
    from whisper_hpc.model_store import resolve_model

    model = resolve_model(arguments.model, model_root(arguments.root))
    columns = Columns(arguments.audio_column, arguments.text_column, arguments.language_column)
    prepare(arguments.manifest, model, arguments.output,
            PrepareOptions(columns=columns, eval_fraction=arguments.eval_fraction, language=arguments.language))
    return 0


def run_train(arguments) -> int:
    from whisper_hpc.finetune.model import ModelSettings
    from whisper_hpc.finetune.train import TrainOptions, train

    targets = tuple(name.strip() for name in arguments.lora_targets.split(",") if name.strip())
    settings = ModelSettings(method=arguments.method, lora_rank=arguments.lora_rank, lora_alpha=arguments.lora_alpha,
                             lora_targets=targets, lora_encoder=arguments.lora_encoder,
                             freeze_encoder=arguments.freeze_encoder)
    lr = arguments.lr if arguments.lr is not None else (1e-3 if arguments.method == "lora" else 1e-5)
    options = TrainOptions(model=settings, max_steps=arguments.max_steps, epochs=arguments.epochs, lr=lr,
                           batch_size=arguments.batch_size, grad_accum=arguments.grad_accum,
                           optimizer=arguments.optimizer, weight_decay=arguments.weight_decay, seed=arguments.seed,
                           save_every=arguments.save_every, eval_every=arguments.eval_every,
                           log_every=arguments.log_every, precision=arguments.precision,
                           say=lambda line: print(line, flush=True))
    train(arguments.run_dir, options)
    return 0


def run_export(arguments) -> int:
    from whisper_hpc.finetune.export import export

    export(arguments.run_dir, arguments.name, model_root(arguments.root), arguments.quantization,
           arguments.checkpoint, arguments.overwrite, say=lambda line: print(line, flush=True))
    return 0


COMMANDS = {"prepare": run_prepare, "train": run_train, "export": run_export}


@entry_point(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    runtime.make_offline()
    arguments = parser().parse_args(argv)
    # SIGTERM (scancel, a time limit, a requeue) unwinds (entry_point); the next run resumes from the last checkpoint.
    try:
        runtime.start_run()
        return COMMANDS[arguments.command](arguments)
    except WhisperHpcError as error:
        return report(PROG, error)
    except OSError as error:
        print(f"{PROG}: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; `{PROG} train` resumes from the last complete checkpoint", file=sys.stderr)
        return 130
