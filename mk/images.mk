# Apptainer images (containers/): `make images` builds $(BUILD)/images/whisper.sif and
# whisper-diarization.sif (which also trains: transformers, peft), with SHA256SUMS beside them.
# Unchanged images come from a cache kept outside the checkout ($(IMAGE_CACHE)/images).
# `make test` installs Apptainer, builds both images and runs tests/test_images.py against them.
#
# IMAGE_BASE=cpu (default here): Debian bookworm from the mirror, the CPU torch wheel from the wheel folder.
# IMAGE_BASE=cuda: a site's CUDA base (IMAGE_FROM=nvidia/cuda:...), which needs a container registry.
# WHEELS=/srv/wheels: a site's local wheel folder (pip --find-links); PIP_INDEX=none builds from it alone.
IMAGE_BASE ?= cpu
# Outside the checkout, so a fresh clone on the same machine reuses it (a user's own build: build/cache).
IMAGE_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/whisper-hpc,$(CURDIR)/$(BUILD)/cache)
# The diarization image is also the training image (whisper_hpc.finetune, slurm/whisper-finetune.sbatch):
# its layer adds pyannote.audio, transformers + safetensors and peft, one lock made from their three.
TRAINING_LOCKS := requirements/diarization.lock requirements/convert.lock requirements/finetune.lock
DIARIZATION_LOCK ?= $(BUILD)/locks/whisper-diarization.lock
IMAGE_ENV = IMAGES_DIR=$(BUILD)/images IMAGE_CACHE=$(IMAGE_CACHE) IMAGE_BASE=$(IMAGE_BASE) PYTHON=$(BIN)/python \
	DIARIZATION_LOCK=$(DIARIZATION_LOCK)

.PHONY: images image-whisper image-diarization apptainer-installed
TEST_DEPS += images

apptainer-installed:
	APPTAINER_CACHE=$(IMAGE_CACHE)/apptainer bash tests/infra/install-apptainer.sh

image-whisper: venv apptainer-installed
	$(IMAGE_ENV) bash containers/build.sh whisper

image-diarization: image-whisper $(DIARIZATION_LOCK)
	$(IMAGE_ENV) bash containers/build.sh whisper-diarization

# Each package once; a package pinned twice at different versions (or apart from whisper.lock's) stops the build.
$(BUILD)/locks/whisper-diarization.lock: requirements/whisper.lock $(TRAINING_LOCKS)
	@mkdir -p $(@D)
	@{ echo "# Made by mk/images.mk (do not edit): the whisper-diarization image's packages on top of"; \
	   echo "# requirements/whisper.lock (pip install --no-deps -r), each once, from $(TRAINING_LOCKS)"; \
	   awk '/^[[:space:]]*(#|$$)/ { next } \
	        { sub(/[[:space:]]*#.*/, ""); split($$0, pin, "=="); name = tolower(pin[1]); gsub(/[-_.]+/, "-", name) } \
	        FILENAME == "requirements/whisper.lock" { base[name] = pin[2]; next } \
	        (name in base && base[name] != pin[2]) || (name in seen && seen[name] != pin[2]) { \
	            print FILENAME ": " $$0 " clashes with " (name in seen ? seen[name] : base[name] " in requirements/whisper.lock") > "/dev/stderr"; bad = 1; next } \
	        name in seen || name in base { next } \
	        { seen[name] = pin[2]; print } \
	        END { exit bad }' requirements/whisper.lock $(TRAINING_LOCKS); } > $@.partial
	@mv $@.partial $@

images: image-whisper image-diarization
	@cat $(BUILD)/images/SHA256SUMS
