"""openai-whisper (PyTorch): fp16 only on CUDA, with a one-line notice instead of warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from whisper_hpc.engines.base import (
    SAMPLING_SEED, DecodeOptions, EngineError, EngineResult, ModelRequest, Notice, package_versions,
)
from whisper_hpc.transcript import Segment, Word

FP16_TYPES = {"float16", "int8_float16"}


class OpenAIWhisperEngine:
    name = "openai-whisper"

    def __init__(self, model: ModelRequest, notice: Notice) -> None:
        import torch

        self.notice = notice
        self.device = model.device
        torch.set_num_threads(model.threads)
        torch.manual_seed(SAMPLING_SEED)
        wants_fp16 = model.compute_type in FP16_TYPES if model.compute_type else model.device == "cuda"
        if wants_fp16 and model.device == "cpu":
            notice("openai-whisper: fp16 is not supported on CPU; using fp32")
            wants_fp16 = False
        self.fp16 = wants_fp16
        self.compute_type = "float16" if wants_fp16 else "float32"
        checkpoint = self.checkpoint_path(model)
        self.model = load_checkpoint(checkpoint, model.staged.name, model.device)
        self.multilingual = self.model.is_multilingual

    def checkpoint_path(self, model: ModelRequest) -> Path:
        found = model.staged.openai_checkpoint
        if found is not None:
            return found
        if model.staged.ctranslate2_dir is None:
            raise EngineError(f"{model.staged.path}: no openai-whisper checkpoint and no CTranslate2 model to convert")
        from whisper_hpc.convert import convert_ctranslate2_to_openai
        from whisper_hpc.runtime import run_scratch

        target = run_scratch() / f"{model.staged.name}.openai-whisper.pt"
        self.notice(
            f"openai-whisper: converting {model.staged.path} for this run "
            f"(stage it once with `whisper-models convert {model.staged.name}` to skip this)"
        )
        return convert_ctranslate2_to_openai(model.staged.ctranslate2_dir, target)

    def transcribe(self, samples: np.ndarray, options: DecodeOptions) -> EngineResult:
        import torch

        language, probability = options.language, None
        if language is None:
            language, probability = self.detect_language(samples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = self.model.transcribe(
                torch.from_numpy(samples),
                verbose=None,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                best_of=options.best_of,
                patience=options.patience,
                length_penalty=options.length_penalty,
                temperature=options.temperature,
                compression_ratio_threshold=options.compression_ratio_threshold,
                logprob_threshold=options.logprob_threshold,
                no_speech_threshold=options.no_speech_threshold,
                hallucination_silence_threshold=options.hallucination_silence_threshold,
                condition_on_previous_text=options.condition_on_previous_text,
                initial_prompt=options.initial_prompt,
                carry_initial_prompt=options.carry_initial_prompt,
                prefix=options.prefix,
                word_timestamps=options.word_timestamps,
                prepend_punctuations=options.prepend_punctuations,
                append_punctuations=options.append_punctuations,
                suppress_tokens=options.suppress_tokens,
                suppress_blank=options.suppress_blank,
                clip_timestamps=[time for clip in options.clips for time in clip] if options.clips is not None else "0",
                fp16=self.fp16,
            )
        segments = (convert(s, options.word_timestamps) for s in result["segments"])
        return EngineResult(segments, result.get("language", language), probability)

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        import torch
        import whisper

        clip = whisper.pad_or_trim(torch.from_numpy(samples))
        mel = whisper.log_mel_spectrogram(clip, self.model.dims.n_mels).to(self.model.device)
        if self.fp16:
            mel = mel.half()
        _, probabilities = self.model.detect_language(mel)
        language = max(probabilities, key=probabilities.get)
        return language, float(probabilities[language])

    def versions(self) -> dict[str, str]:
        return package_versions("openai-whisper", "torch")


def load_checkpoint(path: Path, name: str, device: str):
    """Load an openai-whisper checkpoint by path, alignment heads included (word timestamps need them)."""
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    from whisper_hpc.convert import alignment_heads_mask

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise EngineError(f"{path}: not a loadable openai-whisper checkpoint ({error}); re-stage the model")
    dims = ModelDimensions(**checkpoint["dims"])
    model = Whisper(dims)
    model.load_state_dict(checkpoint["model_state_dict"])
    heads = checkpoint.get("alignment_heads")
    if heads:
        model.set_alignment_heads(alignment_heads_mask(heads, dims.n_text_layer, dims.n_text_head))
    elif name in whisper._ALIGNMENT_HEADS:
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
    return model.to(device)


def convert(segment: dict, with_words: bool) -> Segment:
    words = None
    if with_words:
        words = [Word(w["start"], w["end"], w["word"], w["probability"]) for w in segment.get("words", [])]
    return Segment(
        start=segment["start"],
        end=segment["end"],
        text=segment["text"],
        words=words,
        avg_logprob=segment.get("avg_logprob"),
        no_speech_prob=segment.get("no_speech_prob"),
        compression_ratio=segment.get("compression_ratio"),
        temperature=segment.get("temperature"),
        tokens=list(segment.get("tokens", [])),
        seek=segment.get("seek", 0),
    )
