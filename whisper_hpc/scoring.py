"""Word error rate, with the light normalisation speech papers use (case, punctuation): our own
scorer, for whisper-finetune's evaluation and for the tests and benchmarks (tests/wer.py), so
nothing is fetched from a hub."""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("/", " ").replace("-", " ")
    return re.sub(r"[^\w\s']", " ", text).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words)."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, guess in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != guess))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Errors over reference words; an empty reference scores 0 for an empty hypothesis, else 1."""
    wrong, count = word_errors(reference, hypothesis)
    if not count:
        return 0.0 if not normalise(hypothesis) else 1.0
    return wrong / count


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """All errors over all reference words, for (reference, hypothesis) pairs."""
    errors = words = 0
    for reference, hypothesis in pairs:
        wrong, count = word_errors(reference, hypothesis)
        errors, words = errors + wrong, words + count
    return errors / words if words else 0.0
