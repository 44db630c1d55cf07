"""`whisper-finetune train`: a plain torch loop, one process or many (torchrun, DDP).

The loss of a global step is the sum of the token cross-entropies of all its clips (all ranks,
all accumulation micro-steps) divided by the number of target tokens in all of them, counted
first by an all-reduce. Each micro-step's backward takes its token sum over that global count,
times the world size (DDP averages gradients over ranks): the gradient is exactly that of one
process on the whole global batch.

Test hook: WHISPER_HPC_FINETUNE_WRONG_SCALING=1 uses the per-micro-batch mean instead (the
known trap), so a test can show that the equivalence check catches it."""

from __future__ import annotations

import math
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whisper_hpc.finetune import checkpoint, distributed
from whisper_hpc.finetune.data import IGNORE, TrainingStream, collate, micro_batches
from whisper_hpc.finetune.model import ModelSettings, build, load_weights, save_weights
from whisper_hpc.finetune.rundir import FinetuneError, RunDir, exclusive, same_base

WRONG_SCALING = "WHISPER_HPC_FINETUNE_WRONG_SCALING"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainOptions:
    model: ModelSettings = field(default_factory=ModelSettings)
    max_steps: int | None = None
    epochs: float | None = None
    lr: float = 1e-3
    batch_size: int = 8  # per rank and micro-step
    grad_accum: int = 1
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 100
    eval_every: int = 0  # 0: at the end only
    log_every: int = 10
    precision: str = "auto"
    encoder_cache_mb: int = 2048  # a frozen encoder's outputs kept in memory
    say: Callable[[str], None] = print


def global_batch_size(options: TrainOptions, ranks: distributed.Ranks) -> int:
    return options.batch_size * ranks.world * options.grad_accum


def total_steps(options: TrainOptions, examples: int, global_batch: int) -> int:
    if options.max_steps:
        return options.max_steps
    epochs = options.epochs if options.epochs else 1.0
    return max(1, math.ceil(epochs * examples / global_batch))


def chosen_precision(precision: str, device: str):
    """The autocast dtype, or None for float32."""
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and not device.startswith("cuda"):
        raise FinetuneError("--precision fp16 needs a GPU; use fp32 (or bf16) on CPU")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def make_optimizer(options: TrainOptions, parameters):
    import torch

    if options.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)


def encoder_frozen(settings: ModelSettings) -> bool:
    if settings.method == "full":
        return settings.freeze_encoder
    return not settings.lora_encoder


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def check_resumable(run: RunDir, meta: dict, state: dict, options: TrainOptions, folder: Path) -> None:
    """Refuse a checkpoint from another base model or trained with other model settings."""
    if not same_base(state.get("base_model", {}), meta["base"]):
        theirs, ours = state.get("base_model", {}), meta["base"]
        raise FinetuneError(f"{folder} was trained from {theirs.get('name')} ({str(theirs.get('model_sha256'))[:12]}), "
                            f"but {run.path} was prepared from {ours.get('name')} ({str(ours.get('model_sha256'))[:12]}); "
                            "refusing to resume: use a new RUN_DIR")
    if state.get("model") != options.model.record():
        raise FinetuneError(f"{folder} was trained with other model settings ({state.get('model')}); "
                            "resume with the same --method/--lora_*/--freeze_encoder, or use a new RUN_DIR")


def train(run_dir: Path, options: TrainOptions) -> dict:
    """Train RUN_DIR to its last step (resuming from its newest complete checkpoint)."""
    ranks = distributed.start()
    try:
        run = RunDir(Path(run_dir).absolute())
        with ExitStack() as held:
            problem = None
            try:
                meta = run.meta()
                if ranks.main:
                    held.enter_context(exclusive(run))  # rank 0 holds RUN_DIR/train.lock for the whole run
            except FinetuneError as error:
                problem = error
            distributed.agree(ranks, problem)
            return train_locked(run, meta, options, ranks)
    finally:
        distributed.stop(ranks)


def train_locked(run: RunDir, meta: dict, options: TrainOptions, ranks: distributed.Ranks) -> dict:
    import torch

    say = options.say if ranks.main else (lambda line: None)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if ranks.main:
        for leftover in checkpoint.remove_incomplete(run):
            say(f"removed the incomplete checkpoint {leftover.name} (a killed save)")
    distributed.barrier(ranks)
    resume = checkpoint.latest(run.path)
    state = checkpoint.read_state(resume) if resume else None
    if state is not None:
        check_resumable(run, meta, state, options, resume)
    stream = TrainingStream(run, options.seed)
    if not len(stream):
        raise FinetuneError(f"{run.path} has no training clips")
    global_batch = global_batch_size(options, ranks)
    steps = total_steps(options, len(stream), global_batch)
    dtype = chosen_precision(options.precision, ranks.device)

    model = build(run.base, options.model, options.seed)
    if resume:
        load_weights(model, resume, options.model)
    model.to(ranks.device).train()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = make_optimizer(options, parameters)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    step, seen, last_wer = 0, 0, None
    if resume:
        saved = torch.load(resume / checkpoint.OPTIMIZER, map_location=ranks.device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        step, seen, last_wer = state["step"], state["examples_seen"], state.get("eval_wer")
        say(f"resuming from {resume.name}: step {step}/{steps}, {seen} examples seen")
    trainable = sum(parameter.numel() for parameter in parameters)
    say(f"training {meta['base']['name']} ({options.model.method}, {trainable / 1e6:.2f} M trainable parameters) "
        f"on {len(stream)} clips: {steps} steps of {global_batch} clips "
        f"({options.batch_size} per rank x {ranks.world} ranks x {options.grad_accum} accumulation), {ranks.device}")
    network = model
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(model, device_ids=[ranks.local_rank] if ranks.device != "cpu" else None)
    wrong_scaling = os.environ.get(WRONG_SCALING) == "1"
    cache = None
    if encoder_frozen(options.model):
        from whisper_hpc.finetune.encoder_cache import EncoderCache

        cache = EncoderCache(run, model.get_encoder(), ranks.device, options.encoder_cache_mb)
    tokenizer = None
    started, start_step, loss = time.monotonic(), step, float("nan")
    while step < steps:
        step_started = time.monotonic()
        torch.manual_seed(options.seed * 1_000_003 + step * 1009 + ranks.rank)  # dropout draws: fixed per step
        chunks = micro_batches(stream.take(seen, global_batch), options.batch_size, ranks.rank, ranks.world,
                               options.grad_accum)
        local_tokens = sum(len(clip["tokens"]) - 1 for chunk in chunks for clip in chunk)
        global_tokens = distributed.all_sum(ranks, [float(local_tokens)])[0]
        summed = 0.0
        for index, chunk in enumerate(chunks):
            batch = collate(run, chunk, ranks.device, features=cache is None)
            last = index == len(chunks) - 1
            context = network.no_sync() if ranks.distributed and not last else nullcontext()
            with context:
                with torch.autocast(ranks.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                    if cache is None:
                        logits = network(input_features=batch.features, decoder_input_ids=batch.inputs).logits
                    else:
                        logits = network(encoder_outputs=(cache.batch(chunk),), decoder_input_ids=batch.inputs).logits
                token_loss = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), batch.targets.reshape(-1),
                    ignore_index=IGNORE, reduction="sum")
                if wrong_scaling:
                    scaled = token_loss / batch.tokens
                else:
                    scaled = token_loss * ranks.world / global_tokens
                scaler.scale(scaled).backward()
            summed += float(token_loss.detach())
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen += global_batch
        loss = distributed.all_sum(ranks, [summed])[0] / global_tokens
        if ranks.main and (step % options.log_every == 0 or step == steps or step == start_step + 1):
            elapsed = time.monotonic() - started
            rate = global_tokens / max(1e-9, time.monotonic() - step_started)
            eta = elapsed / (step - start_step) * (steps - step)
            say(f"step {step}/{steps} loss {loss:.3f} tokens/s {rate:.0f} eta {format_eta(eta)}")
        if (options.eval_every and step % options.eval_every == 0) or step == steps:
            if ranks.main:
                tokenizer = tokenizer or load_tokenizer(run)
                wer, count = eval_model(model, run, tokenizer, ranks.device, dtype)
                if count:
                    last_wer = wer
                    say(f"eval wer {wer:.3f} ({count} clips)")
            distributed.barrier(ranks)
        if (options.save_every and step % options.save_every == 0) or step == steps:
            if ranks.main:
                record = {
                    "step": step, "total_steps": steps, "examples_seen": seen, "global_batch": global_batch,
                    "world_size": ranks.world, "seed": options.seed, "rng": "reseeded from (seed, step, rank) each step",
                    "base_model": meta["base"], "data_sha256": meta["data"]["sha256"], "model": options.model.record(),
                    "optimizer": options.optimizer, "lr": options.lr, "loss": loss, "eval_wer": last_wer,
                    "precision": options.precision,
                }
                saved = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None}
                folder = checkpoint.save(run, step, lambda target: save_weights(model, target, options.model), saved, record)
                say(f"saved {folder.relative_to(run.path)}")
            distributed.barrier(ranks)
    return {"step": step, "loss": loss, "eval_wer": last_wer}


def eval_model(model, run: RunDir, tokenizer, device: str, dtype):
    import torch

    from whisper_hpc.finetune.evaluate import eval_wer

    with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        return eval_wer(model, run, tokenizer, device)


def load_tokenizer(run: RunDir):
    from whisper_hpc.staging.hf_format import import_transformers

    return import_transformers().WhisperTokenizer.from_pretrained(run.base, local_files_only=True)
