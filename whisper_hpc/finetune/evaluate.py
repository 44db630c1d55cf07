"""Evaluation on the held-out clips: greedy decoding (no timestamps), WER with our own scorer."""

from __future__ import annotations

from whisper_hpc.finetune.data import collate
from whisper_hpc.finetune.rundir import RunDir
from whisper_hpc.scoring import corpus_wer

EVAL_BATCH = 8


def greedy_transcribe(model, features, prefix, end: int, limit: int = 200) -> list[list[int]]:
    """Text tokens for each row of `features`, decoded greedily after each row's `prefix` tokens."""
    import torch

    batch = features.shape[0]
    encoder = model.get_encoder()(features).last_hidden_state
    tokens = prefix
    done = torch.zeros(batch, dtype=torch.bool, device=features.device)
    output = [[] for _ in range(batch)]
    past = None
    step_input = tokens
    for _ in range(limit):
        result = model(encoder_outputs=(encoder,), decoder_input_ids=step_input, past_key_values=past, use_cache=True)
        past = result.past_key_values
        logits = result.logits[:, -1, :].float()
        logits[:, end + 1:] = float("-inf")  # no timestamps, no other special tokens
        chosen = logits.argmax(dim=-1)
        chosen = torch.where(done, torch.full_like(chosen, end), chosen)
        for row in range(batch):
            if not done[row] and chosen[row].item() != end:
                output[row].append(int(chosen[row]))
        done |= chosen == end
        if bool(done.all()):
            break
        step_input = chosen[:, None]
    return output


def eval_wer(model, run: RunDir, tokenizer, device: str) -> tuple[float, int]:
    """(corpus WER over the eval split, clips scored); (nan, 0) without an eval split."""
    import torch

    clips = [clip for clip in run.clips() if clip["split"] == "eval"]
    if not clips:
        return float("nan"), 0
    was_training = model.training
    model.eval()
    pairs = []
    try:
        with torch.no_grad():
            for start in range(0, len(clips), EVAL_BATCH):
                chunk = clips[start:start + EVAL_BATCH]
                groups: dict[tuple, list[dict]] = {}
                for clip in chunk:  # one prefix length per group (languages may differ)
                    groups.setdefault(tuple(prefix_of(clip)), []).append(clip)
                for prefix, group in groups.items():
                    batch = collate(run, group, device)
                    prefix_tensor = torch.tensor([list(prefix)] * len(group), dtype=torch.long, device=device)
                    decoded = greedy_transcribe(model, batch.features, prefix_tensor, group[0]["tokens"][-1])
                    for clip, tokens in zip(group, decoded):
                        pairs.append((clip["text"], tokenizer.decode(tokens, skip_special_tokens=True)))
    finally:
        model.train(was_training)
    return corpus_wer(pairs), len(pairs)


def prefix_of(clip: dict) -> list[int]:
    """The clip's tokens up to and including <|notimestamps|> (the last special token before the text)."""
    tokens = clip["tokens"]
    end = tokens[-1]
    count = 1
    while count < len(tokens) and tokens[count] > end:
        count += 1
    return tokens[:count]
