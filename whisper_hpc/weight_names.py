"""One Whisper, three spellings of its weights: openai-whisper's, Hugging Face transformers', and
MindSpeed-MM's (transformers' with the attention projections renamed).

    openai-whisper                        transformers (WhisperForConditionalGeneration)
    encoder.conv1.weight                  model.encoder.conv1.weight
    encoder.positional_embedding          model.encoder.embed_positions.weight
    encoder.blocks.N.attn.query.weight    model.encoder.layers.N.self_attn.q_proj.weight
    encoder.blocks.N.attn_ln.weight       model.encoder.layers.N.self_attn_layer_norm.weight
    encoder.blocks.N.mlp.0.weight         model.encoder.layers.N.fc1.weight
    encoder.ln_post.weight                model.encoder.layer_norm.weight
    decoder.token_embedding.weight        model.decoder.embed_tokens.weight (and proj_out.weight, tied)
    decoder.blocks.N.cross_attn.key...    model.decoder.layers.N.encoder_attn.k_proj...
    decoder.ln.weight                     model.decoder.layer_norm.weight

MindSpeed-MM: q_proj -> proj_q, k_proj -> proj_k, v_proj -> proj_v, out_proj -> proj_out inside the
attention modules; the language-model head `proj_out.weight` keeps its name.
"""

from __future__ import annotations

import re

BLOCK_PARTS = [  # (openai inside a block, transformers inside a layer)
    ("attn.query.", "self_attn.q_proj."), ("attn.key.", "self_attn.k_proj."), ("attn.value.", "self_attn.v_proj."),
    ("attn.out.", "self_attn.out_proj."), ("attn_ln.", "self_attn_layer_norm."),
    ("cross_attn.query.", "encoder_attn.q_proj."), ("cross_attn.key.", "encoder_attn.k_proj."),
    ("cross_attn.value.", "encoder_attn.v_proj."), ("cross_attn.out.", "encoder_attn.out_proj."),
    ("cross_attn_ln.", "encoder_attn_layer_norm."), ("mlp.0.", "fc1."), ("mlp.2.", "fc2."), ("mlp_ln.", "final_layer_norm."),
]
TOP_PARTS = [  # whole names outside the blocks
    ("encoder.conv1.", "model.encoder.conv1."), ("encoder.conv2.", "model.encoder.conv2."),
    ("encoder.positional_embedding", "model.encoder.embed_positions.weight"), ("encoder.ln_post.", "model.encoder.layer_norm."),
    ("decoder.token_embedding.", "model.decoder.embed_tokens."),
    ("decoder.positional_embedding", "model.decoder.embed_positions.weight"), ("decoder.ln.", "model.decoder.layer_norm."),
]
OPENAI_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)$")
HF_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
LM_HEAD = "proj_out.weight"
MINDSPEED = {"q_proj": "proj_q", "k_proj": "proj_k", "v_proj": "proj_v", "out_proj": "proj_out"}
ATTENTION = re.compile(r"\.(self_attn|encoder_attn)\.([a-z_]+)\.")


class UnknownWeight(ValueError):
    """A tensor name that is no part of a Whisper encoder-decoder."""


def _swap(name: str, pairs: list[tuple[str, str]]) -> str | None:
    """`name` with the first matching prefix replaced, or None."""
    return next((target + name[len(source):] for source, target in pairs if name.startswith(source)), None)


def hf_name(openai_name: str) -> str:
    """The transformers name of an openai-whisper tensor."""
    block = OPENAI_BLOCK.match(openai_name)
    if block:
        stack, layer, rest = block.groups()
        renamed = _swap(rest, BLOCK_PARTS)
        if renamed is not None:
            return f"model.{stack}.layers.{layer}.{renamed}"
    renamed = _swap(openai_name, TOP_PARTS)
    if renamed is None:
        raise UnknownWeight(f"{openai_name} is not an openai-whisper tensor")
    return renamed


def openai_name(hf: str) -> str:
    """The openai-whisper name of a transformers tensor (the tied LM head has none: it is the embedding)."""
    layer = HF_LAYER.match(hf)
    if layer:
        stack, number, rest = layer.groups()
        renamed = _swap(rest, [(b, a) for a, b in BLOCK_PARTS])
        if renamed is not None:
            return f"{stack}.blocks.{number}.{renamed}"
    renamed = _swap(hf, [(b, a) for a, b in TOP_PARTS])
    if renamed is None:
        raise UnknownWeight(f"{hf} is not a WhisperForConditionalGeneration tensor")
    return renamed


def mindspeed_name(hf: str) -> str:
    """transformers -> MindSpeed-MM: the attention projections renamed, everything else kept."""
    return ATTENTION.sub(lambda m: f".{m.group(1)}.{MINDSPEED.get(m.group(2), m.group(2))}.", hf)


def hf_name_from_mindspeed(name: str) -> str:
    """MindSpeed-MM -> transformers (the inverse of mindspeed_name)."""
    back = {v: k for k, v in MINDSPEED.items()}
    return ATTENTION.sub(lambda m: f".{m.group(1)}.{back.get(m.group(2), m.group(2))}.", name)
