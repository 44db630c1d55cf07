# make install PREFIX=/opt/whisper-hpc SITE=site.toml: the wrapper, the modulefiles, the example
# job scripts, the images (when `make images` built them) and the Open OnDemand app, all rendered
# from the one site file (whisper_hpc/install.py). PREFIX defaults to the site's [paths] prefix.
SITE ?= $(or $(WHISPER_HPC_SITE),site.example.toml)
PREFIX ?=
.PHONY: install
install: venv
	$(BIN)/python -m whisper_hpc.install --site "$(SITE)" $(if $(PREFIX),--prefix "$(PREFIX)") --images "$(BUILD)/images" --venv "$(VENV)"
