"""Speech engines behind one interface. Each module imports its engine lazily."""

from __future__ import annotations

from whisper_hpc.engines.base import DecodeOptions, Engine, EngineError, ModelRequest, VadParameters

BACKENDS = ("faster-whisper", "openai-whisper")


def load_engine(backend: str, model: ModelRequest, notice=print) -> Engine:
    """Instantiate the engine for `backend` (this is where torch / ctranslate2 get imported)."""
    if backend == "faster-whisper":
        from whisper_hpc.engines.faster_whisper_engine import FasterWhisperEngine

        return FasterWhisperEngine(model, notice)
    if backend == "openai-whisper":
        from whisper_hpc.engines.openai_whisper_engine import OpenAIWhisperEngine

        return OpenAIWhisperEngine(model, notice)
    raise EngineError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "DecodeOptions", "Engine", "EngineError", "ModelRequest", "VadParameters", "load_engine"]
