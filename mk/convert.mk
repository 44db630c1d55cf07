# Model import and export (whisper_hpc/staging/exchange.py): transformers and safetensors from
# requirements/convert.lock, layered on the whisper venv. An administrator's tool: the images
# never carry them.
.PHONY: convert-venv
TEST_DEPS += convert-venv

convert-venv: $(VENV)/.convert-installed

$(VENV)/.convert-installed: requirements/convert.lock requirements/whisper.lock $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements/convert.lock
	touch $@
