# Fine-tuning (whisper_hpc/finetune/, whisper-finetune): peft and what it imports, from
# requirements/finetune.lock, layered on the whisper venv and the conversion tools (transformers).
# tests/test_finetune.py synthesises sentences with espeak-ng (a test tool only).
.PHONY: finetune-venv espeak-installed
TEST_DEPS += finetune-venv espeak-installed

finetune-venv: $(VENV)/.finetune-installed

$(VENV)/.finetune-installed: requirements/finetune.lock $(VENV)/.convert-installed
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements/finetune.lock
	touch $@

espeak-installed:
	bash scripts/system-deps.sh espeak-ng

# Training speed on 1 and 2 ranks, side by side (tests/bench_finetune.py); also run by `make bench`.
BENCH_FINETUNE_ARGS ?=
.PHONY: bench-finetune
bench-finetune: venv models finetune-venv
	SHARED_DATA=$(SHARED)/data $(BIN)/python tests/bench_finetune.py $(BENCH_FINETUNE_ARGS)
