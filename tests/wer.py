"""The tests' and benchmarks' word error rate: whisper_hpc.scoring's, the one home of the scorer."""

from whisper_hpc.scoring import normalise, word_error_rate

__all__ = ["normalise", "word_error_rate"]
