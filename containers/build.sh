#!/usr/bin/env bash
# Build one image from the checkout: containers/build.sh whisper|whisper-diarization
#
# whisper.sif is our package on the engines layer (engines.def: OS, ffmpeg, requirements/whisper.lock);
# whisper-diarization.sif is pyannote.audio on whisper.sif. Each SIF is kept in $IMAGE_CACHE/images
# under a hash of its inputs (definition file, locks, our sources, build arguments, Apptainer
# version): unchanged inputs reuse it (IMAGE_REBUILD=1 forces a rebuild), so the slow engines layer
# is rebuilt only when the lock or the base changes. The results land in $IMAGES_DIR (default
# build/images) with their line in SHA256SUMS.
#
# Environment:
#   IMAGE_BASE   cpu (default): Debian from the mirror (debootstrap), CPU torch from the wheel folder;
#                cuda: Bootstrap docker from IMAGE_FROM (a container registry must be reachable).
#   IMAGE_FROM   the CUDA base (default: engines.def's own default).
#   WHEELS       a site's local wheel folder (pip --find-links); unset: one is filled from the locks in
#                $IMAGE_CACHE/wheels by the host's pip, and the build installs from it alone (no index).
#   PIP_INDEX    the index the build may use: "none" (default without WHEELS) or a URL (default with WHEELS: PyPI).
#   DIARIZATION_LOCK  the lock the diarization layer adds (default requirements/diarization.lock).
#   MKSQUASHFS_ARGS   compression (default zstd level 3: 40x faster than Apptainer's gzip -9, as small;
#                set it empty for gzip, which kernels older than 4.14 need).
set -euo pipefail
cd "$(dirname "$0")/.."

name=${1:?usage: containers/build.sh whisper|whisper-diarization}
IMAGES_DIR=${IMAGES_DIR:-build/images}
IMAGE_CACHE=${IMAGE_CACHE:-/var/cache/whisper-hpc}
IMAGE_BASE=${IMAGE_BASE:-cpu}
APPTAINER=${APPTAINER:-apptainer}
PYTHON=${PYTHON:-.venv/bin/python}
DIARIZATION_LOCK=${DIARIZATION_LOCK:-requirements/diarization.lock}
MKSQUASHFS_ARGS=${MKSQUASHFS_ARGS--comp zstd -Xcompression-level 3}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
CACHE=$IMAGE_CACHE/images

say() { echo "images: $*" >&2; }
digest() { sha256sum | cut -c1-16; }
quiet_pip() { "$PYTHON" -m pip "$@" 2> >(grep -v '^WARNING: Location' >&2); }

# Our package's sources, and a wheel built from a clean copy of them (a stale build/lib cannot leak in).
project_sources() {
  find whisper_hpc -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print | sort
  ls pyproject.toml README.rst LICENSE* 2>/dev/null || true
}
build_project_wheel() {
  local copy isolation=()
  copy=$(mktemp -d)
  project_sources | xargs -d '\n' cp --parents -p -t "$copy"
  rm -rf build/wheelhouse
  mkdir -p build/wheelhouse
  # The host's own setuptools when it can build us (PEP 639 license: >= 77), so no index is needed.
  "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null \
    && isolation=(--no-build-isolation)
  quiet_pip wheel -q --no-deps "${isolation[@]}" -w build/wheelhouse "$copy"
  rm -rf "$copy"
}

# Third-party wheels, once per lock content, into the cache (the host's pip also sees its local wheels).
fill_wheelhouse() {
  local folder=$1 lock=$2 stamp
  stamp=$folder/.filled-$(digest < "$lock")
  [ -e "$stamp" ] && return
  say "filling the wheel folder $folder from $lock"
  mkdir -p "$folder"
  quiet_pip wheel -q --no-deps --find-links "$folder" -w "$folder" -r "$lock"
  touch "$stamp"
}

# build_cached NAME KEY DEFFILE ARGS...: make $CACHE/NAME-KEY.sif unless it exists; sets $built.
build_cached() {
  local image=$1 key=$2 definition=$3
  shift 3
  built=$CACHE/$image-$key.sif
  if [ -s "$built" ] && [ -z "${IMAGE_REBUILD:-}" ]; then
    say "$image: inputs unchanged, reusing $built"
    return
  fi
  local log=$IMAGES_DIR/$image.build.log squash=() start seconds
  [ -n "$MKSQUASHFS_ARGS" ] && squash=(--mksquashfs-args "$MKSQUASHFS_ARGS")
  say "$image: building from $definition (log: $log)"
  start=$(date +%s)
  if ! timeout "$BUILD_TIMEOUT" "$APPTAINER" build --force --fakeroot "${squash[@]}" "$@" "$built.partial" "$definition" \
      2>&1 | awk '{print strftime("%T"), $0; fflush()}' > "$log"; then
    tail -n 40 "$log" >&2
    rm -f "$built.partial"
    say "$image: the build failed; the whole log is $log"
    exit 1
  fi
  seconds=$(( $(date +%s) - start ))
  sha256sum "$built.partial" | cut -d' ' -f1 > "$built.sha256"
  echo "$seconds" > "$built.seconds"
  mv "$built.partial" "$built"
  say "$image: built in $seconds s, $(du -m "$built" | cut -f1) MB"
  local hex16=[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]
  hex16=$hex16$hex16  # the key: "whisper-*" alone would also match whisper-engines-* and whisper-diarization-*
  ls -t "$CACHE/$image"-$hex16.sif | tail -n +3 | while read -r old; do rm -f "$old" "$old.sha256" "$old.seconds"; done
}

# publish NAME KEY: the cached SIF into $IMAGES_DIR (a hard link when it can), with its checksum.
publish() {
  local image=$1 key=$2 target=$IMAGES_DIR/$1.sif sums=$IMAGES_DIR/SHA256SUMS
  rm -f "$target"
  ln "$built" "$target" 2>/dev/null || cp "$built" "$target"
  echo "$key" > "$target.key"
  touch "$sums"
  { grep -v " $image.sif\$" "$sums" || true; echo "$(cat "$built.sha256")  $image.sif"; } | sort -k2 > "$sums.new"
  mv "$sums.new" "$sums"
  say "$image: $target ($(du -m "$target" | cut -f1) MB), checksum in $sums"
}

mkdir -p "$IMAGES_DIR" "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
case $name in
  whisper) lock=requirements/whisper.lock ;;
  whisper-diarization) lock=$DIARIZATION_LOCK ;;
  *) say "unknown image '$name': whisper or whisper-diarization"; exit 2 ;;
esac
[ -f "$lock" ] || { say "$lock is missing"; exit 2; }

if [ -n "${WHEELS:-}" ]; then
  wheels=$(cd "$WHEELS" && pwd)
  pip_index=${PIP_INDEX:-https://pypi.org/simple}
else
  wheels=$IMAGE_CACHE/wheels
  fill_wheelhouse "$wheels" "$lock"
  pip_index=${PIP_INDEX:-none}
fi
package_args=(--bind "$wheels:/mnt:ro" --build-arg "WHEELS=/mnt" --build-arg "PIP_INDEX=$pip_index")
version=$("$APPTAINER" version)

if [ "$name" = whisper ]; then
  case $IMAGE_BASE in
    cpu) base_args=(--build-arg BOOTSTRAP=debootstrap --build-arg FROM=debian:bookworm
                    --build-arg OSVERSION=bookworm --build-arg "MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}") ;;
    cuda) base_args=(--build-arg BOOTSTRAP=docker)
          [ -n "${IMAGE_FROM:-}" ] && base_args+=(--build-arg "FROM=$IMAGE_FROM") ;;
    *) say "IMAGE_BASE=$IMAGE_BASE: cpu or cuda"; exit 2 ;;
  esac
  engines_key=$( { echo "${base_args[*]} ${package_args[*]} $MKSQUASHFS_ARGS $version"
                   cat containers/engines.def "$lock"; } | digest)
  build_cached whisper-engines "$engines_key" containers/engines.def "${base_args[@]}" "${package_args[@]}"
  engines=$built
  build_project_wheel
  key=$( { echo "$engines_key $MKSQUASHFS_ARGS"; project_sources | xargs -d '\n' cat
           cat containers/whisper.def containers/selftest.py; } | digest)
  build_cached whisper "$key" containers/whisper.def --build-arg "ENGINES_IMAGE=$engines"
  publish whisper "$key"
else
  base=$IMAGES_DIR/whisper.sif
  [ -s "$base" ] && [ -s "$base.key" ] || { say "build the whisper image first (make image-whisper)"; exit 2; }
  key=$( { echo "$(cat "$base.key") ${package_args[*]} $MKSQUASHFS_ARGS"; cat containers/whisper-diarization.def "$lock"; } | digest)
  build_cached whisper-diarization "$key" containers/whisper-diarization.def \
    --build-arg "WHISPER_IMAGE=$base" --build-arg "LOCK=$lock" "${package_args[@]}"
  publish whisper-diarization "$key"
fi
