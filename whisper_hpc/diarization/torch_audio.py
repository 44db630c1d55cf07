"""Import pyannote.audio with audio given in memory: no torchcodec, torchaudio without its C++ part.

pyannote.audio imports torchaudio unconditionally, but uses only its pure-PyTorch parts
(kaldi-compatible fbank, resampling). The torchaudio wheels on PyPI carry a compiled extension
built against one torch release and CUDA; with any other torch (our pinned CPU build, or a
newer CUDA build) loading it fails and so would `import pyannote.audio`. torchaudio itself
supports running without the extension (its "library not found" case), so when the extension
cannot be loaded we import torchaudio in that mode. torchcodec (decoding) is never needed:
the audio is decoded once by ffmpeg and handed over as a waveform tensor.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings


def import_torchaudio():
    try:
        import torchaudio

        return torchaudio
    except OSError:
        pass  # the compiled extension does not match this torch: use the pure-PyTorch part
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]
    package = importlib.util.find_spec("torchaudio")
    location = package.submodule_search_locations[0] + "/_extension/utils.py"
    spec = importlib.util.spec_from_file_location("torchaudio._extension.utils", location)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    utils._load_lib = lambda library: False  # as if the extension were not shipped
    sys.modules["torchaudio._extension.utils"] = utils
    import torchaudio

    return torchaudio


def prepare_environment() -> None:
    """Before torch and pyannote load: their temporary files into the run directory, OpenMP polite.

    onnxruntime (imported by pyannote.audio.pipelines) leaves a `.ses` file in $TMPDIR and
    torch's compiler a `torchinductor_<user>` folder; the run directory (runtime.start_run) holds
    both and is removed when the process ends.
    """
    from whisper_hpc import runtime

    runtime.start_run()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as runtime.pin_threads, for callers that skip it


def import_pyannote():
    """pyannote.audio, ready for in-memory audio; quiet about the decoder it will not use."""
    if "pyannote.audio" in sys.modules:
        return sys.modules["pyannote.audio"]
    prepare_environment()
    import_torchaudio()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torchcodec")
        import pyannote.audio

    return pyannote.audio
