"""The model being trained: the base Whisper, whole (full) or with LoRA adapters (peft).

LoRA goes on the decoder's layers only, on the linear modules named by --lora_targets
(default q_proj,k_proj,v_proj,out_proj,fc1,fc2: self- and cross-attention and the MLP);
PEFT has no Whisper default. --lora_encoder puts them on the encoder's layers as well."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from whisper_hpc.finetune.rundir import FinetuneError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ADAPTER = "adapter_model.safetensors"
FULL = "model.safetensors"


@dataclass(frozen=True)
class ModelSettings:
    method: str = "lora"  # lora | full
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_encoder: bool = False
    freeze_encoder: bool = False

    def record(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data


def lora_pattern(settings: ModelSettings) -> str:
    """peft's target_modules as one regular expression (matched against whole module names)."""
    stacks = "(?:encoder|decoder)" if settings.lora_encoder else "decoder"
    names = "|".join(re.escape(name) for name in settings.lora_targets)
    return rf"model\.{stacks}\.layers\.\d+\.(?:[a-z_]+\.)?(?:{names})"


def load_base(base: Path):
    from whisper_hpc.staging.hf_format import import_transformers

    transformers = import_transformers()
    return transformers.WhisperForConditionalGeneration.from_pretrained(base, local_files_only=True,
                                                                        dtype="float32")


def build(base: Path, settings: ModelSettings, seed: int):
    """The model to train (LoRA matrices drawn from `seed`: every rank draws the same)."""
    import torch

    model = load_base(base)
    if settings.method == "full":
        if settings.freeze_encoder:
            for parameter in model.model.encoder.parameters():
                parameter.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=lora_pattern(settings), bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise FinetuneError(f"--lora_targets {','.join(settings.lora_targets)}: {error}") from None


def save_weights(model, folder: Path, settings: ModelSettings) -> None:
    """The adapter (LoRA) or the whole model (full), as safetensors, into `folder`."""
    from safetensors.torch import save_file, save_model

    if settings.method == "full":
        save_model(model, str(folder / FULL), metadata={"format": "pt"})
        return
    from peft import get_peft_model_state_dict

    state = {name: tensor.detach().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}
    save_file(state, str(folder / ADAPTER), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(folder))


def load_weights(model, folder: Path, settings: ModelSettings) -> None:
    from safetensors.torch import load_file, load_model

    if settings.method == "full":
        load_model(model, str(folder / FULL), strict=True)
        return
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise FinetuneError(f"{folder}: the adapter does not fit the model ({unexpected[0]})")


def merged(model, settings: ModelSettings):
    """A plain WhisperForConditionalGeneration: LoRA merged into the weights."""
    return model.merge_and_unload() if settings.method == "lora" else model
