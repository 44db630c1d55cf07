#!/usr/bin/env bash
# Figures for containers/README.rst, measured on this machine: image sizes, the last build time of
# each cached image, and the start-up overhead of `apptainer exec` (median of RUNS runs, side by side
# with the same command on the host). Usage: containers/measure.sh [RUNS]  (after `make images`)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
IMAGES_DIR=${IMAGES_DIR:-build/images}
CACHE=${IMAGE_CACHE:-/var/cache/whisper-hpc}/images

median_seconds() {  # median wall time of "$@" over $runs runs
  local times=() start
  for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1
    times+=($(( $(date +%s%N) - start )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {printf "%.3f", a[int((NR + 1) / 2)] / 1e9}'
}

echo "image sizes (MB) and last build times:"
for image in whisper whisper-diarization; do
  sif=$IMAGES_DIR/$image.sif
  key=$(cat "$sif.key")
  printf '  %-22s %5s MB  built in %s s\n' "$image.sif" "$(du -m "$sif" | cut -f1)" "$(cat "$CACHE/$image-$key.sif.seconds" 2>/dev/null || echo '?')"
done
for engines in $(ls -t "$CACHE"/whisper-engines-*.sif 2>/dev/null | head -n 1); do
  printf '  %-22s %5s MB  built in %s s\n' "engines layer" "$(du -m "$engines" | cut -f1)" "$(cat "$engines.seconds")"
done

echo "start-up (median of $runs runs, seconds):"
host_true=$(median_seconds true)
image_true=$(median_seconds apptainer exec "$IMAGES_DIR/whisper.sif" true)
echo "  true on the host: $host_true; apptainer exec whisper.sif true: $image_true"
echo "  apptainer exec overhead: $(echo "$image_true - $host_true" | bc)"
if [ "$(id -u)" -eq 0 ] && id nobody >/dev/null 2>&1; then
  home=$(mktemp -d)
  chown nobody "$home"
  user_true=$(median_seconds runuser -u nobody -- env -i PATH="$PATH" HOME="$home" apptainer exec "$IMAGES_DIR/whisper.sif" true)
  rm -rf "$home"
  echo "  as an unprivileged user (squashfuse): apptainer exec whisper.sif true: $user_true"
fi
host_help=$(median_seconds .venv/bin/whisper-hpc --help)
image_help=$(median_seconds apptainer run "$IMAGES_DIR/whisper.sif" --help)
echo "  whisper-hpc --help on the host: $host_help; apptainer run whisper.sif --help: $image_help"
