# Apptainer images (containers/): `make images` builds $(BUILD)/images/whisper.sif and
# whisper-diarization.sif, with SHA256SUMS beside them. Unchanged images come from a cache kept
# outside the checkout ($(IMAGE_CACHE)/images). `make test` installs Apptainer, builds both images
# and runs tests/test_images.py against them.
#
# IMAGE_BASE=cpu (default here): Debian bookworm from the mirror, the CPU torch wheel from the wheel folder.
# IMAGE_BASE=cuda: a site's CUDA base (IMAGE_FROM=nvidia/cuda:...), which needs a container registry.
# WHEELS=/srv/wheels: a site's local wheel folder (pip --find-links); PIP_INDEX=none builds from it alone.
IMAGE_BASE ?= cpu
# Outside the checkout, so a fresh clone on the same machine reuses it (a user's own build: build/cache).
IMAGE_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/whisper-hpc,$(CURDIR)/$(BUILD)/cache)
DIARIZATION_LOCK ?= requirements/diarization.lock
IMAGE_ENV = IMAGES_DIR=$(BUILD)/images IMAGE_CACHE=$(IMAGE_CACHE) IMAGE_BASE=$(IMAGE_BASE) PYTHON=$(BIN)/python \
	DIARIZATION_LOCK=$(DIARIZATION_LOCK)

.PHONY: images image-whisper image-diarization apptainer-installed
TEST_DEPS += images

apptainer-installed:
	APPTAINER_CACHE=$(IMAGE_CACHE)/apptainer bash tests/infra/install-apptainer.sh

image-whisper: venv apptainer-installed
	$(IMAGE_ENV) bash containers/build.sh whisper

image-diarization: image-whisper
	$(IMAGE_ENV) bash containers/build.sh whisper-diarization

images: image-whisper image-diarization
	@cat $(BUILD)/images/SHA256SUMS
