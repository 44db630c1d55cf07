"""faster-whisper (CTranslate2): int8 on CPU, float16 on CUDA, optional batched inference."""

from __future__ import annotations

import numpy as np

from whisper_hpc.engines.base import (
    SAMPLING_SEED, DecodeOptions, EngineError, EngineResult, ModelRequest, Notice, package_versions,
)
from whisper_hpc.audio import SAMPLE_RATE
from whisper_hpc.transcript import Segment, Word

CLIP_SECONDS = 30.0  # Whisper's window
BATCHED_MIN_SILENCE_MS = 160  # faster-whisper's own batched default


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, model: ModelRequest, notice: Notice) -> None:
        directory = model.staged.ctranslate2_dir
        if directory is None:
            raise EngineError(
                f"{model.staged.path}: not a CTranslate2 model directory (needs model.bin, config.json, "
                "tokenizer.json); use --backend openai-whisper for a .pt checkpoint, or stage the model "
                "with `whisper-models fetch`"
            )
        import ctranslate2
        from faster_whisper import WhisperModel

        ctranslate2.set_random_seed(SAMPLING_SEED)  # before its threads first draw: each seeds itself then
        self.device = model.device
        self.compute_type = model.compute_type or ("float16" if model.device == "cuda" else "int8")
        try:
            self.model = WhisperModel(
                str(directory),
                device=model.device,
                device_index=model.device_index,
                compute_type=self.compute_type,
                cpu_threads=model.threads,
                num_workers=model.workers,
                local_files_only=True,
            )
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"faster-whisper cannot load {directory} on {model.device} as {self.compute_type}: {error}")
        self.batched = None

    def transcribe(self, samples: np.ndarray, options: DecodeOptions) -> EngineResult:
        arguments = dict(
            language=options.language,
            task=options.task,
            multilingual=options.multilingual,
            beam_size=options.beam_size or 1,
            best_of=options.best_of or 1,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            temperature=list(options.temperature),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.logprob_threshold,
            no_speech_threshold=options.no_speech_threshold,
            hallucination_silence_threshold=options.hallucination_silence_threshold,
            condition_on_previous_text=options.condition_on_previous_text,
            prompt_reset_on_temperature=options.prompt_reset_on_temperature,
            initial_prompt=options.initial_prompt,
            prefix=options.prefix,
            hotwords=options.hotwords,
            word_timestamps=options.word_timestamps,
            prepend_punctuations=options.prepend_punctuations,
            append_punctuations=options.append_punctuations,
            suppress_tokens=[int(t) for t in options.suppress_tokens.split(",") if t.strip()],
            suppress_blank=options.suppress_blank,
            vad_filter=options.vad_filter,
            vad_parameters=options.vad.given() or None,
        )
        if options.patience is not None:
            arguments["patience"] = options.patience
        if options.length_penalty is not None:
            arguments["length_penalty"] = options.length_penalty
        if options.batch_size > 1:
            if self.batched is None:
                from faster_whisper import BatchedInferencePipeline

                self.batched = BatchedInferencePipeline(model=self.model)
            if options.clips is not None or not options.vad_filter:
                whole = ((0.0, len(samples) / SAMPLE_RATE),)
                arguments["clip_timestamps"] = batch_clips(options.clips or whole)
            if arguments["vad_parameters"] and "min_silence_duration_ms" not in arguments["vad_parameters"]:
                # given any VAD setting, the batched pipeline would fall back to VadOptions' 2 s silence
                arguments["vad_parameters"]["min_silence_duration_ms"] = BATCHED_MIN_SILENCE_MS
            segments, info = self.batched.transcribe(
                samples, batch_size=options.batch_size, without_timestamps=False, **arguments)
        else:
            if options.clips is not None:
                arguments["clip_timestamps"] = [time for clip in options.clips for time in clip]
            segments, info = self.model.transcribe(samples, **arguments)
        return EngineResult((convert(s) for s in segments), info.language, info.language_probability)

    def versions(self) -> dict[str, str]:
        return package_versions("faster-whisper", "ctranslate2")


def batch_clips(clips: tuple[tuple[float, float], ...]) -> list[dict]:
    """Clips for the batched pipeline, which reads at most 30 s of each: longer ones cut in turn."""
    pieces = []
    for start, end in clips:
        while end - start > 1e-3:
            pieces.append({"start": start, "end": min(end, start + CLIP_SECONDS)})
            start += CLIP_SECONDS
    return pieces


def convert(segment) -> Segment:
    words = None
    if segment.words is not None:
        words = [Word(w.start, w.end, w.word, w.probability) for w in segment.words]
    return Segment(
        start=segment.start,
        end=segment.end,
        text=segment.text,
        words=words,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        compression_ratio=segment.compression_ratio,
        temperature=segment.temperature,
        tokens=list(segment.tokens),
        seek=segment.seek,
    )
