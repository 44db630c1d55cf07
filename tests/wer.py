"""Word error rate, with the light normalisation speech papers use (case, punctuation)."""

from __future__ import annotations

import re
import unicodedata


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower().replace("/", " ").replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    return text.split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, guess in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != guess))
        previous = current
    return previous[-1] / len(ref)
