"""Whisper speech transcription for HPC clusters: one command line for every engine."""

__version__ = "0.1.0"
