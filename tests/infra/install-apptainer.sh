#!/usr/bin/env bash
# Install a real Apptainer on Debian 12 (bookworm), idempotently, for building and testing our images.
#
# Bookworm has no apptainer package and Debian sid's needs glibc >= 2.38 (bookworm has 2.36), so:
# download sid's apptainer and trixie's libc6 (download only, through a private apt configuration),
# unpack both into a private prefix, point apptainer and its starter at the private dynamic loader
# (patchelf, DT_RPATH), and lay them out the way a relocated Apptainer looks for its files.
# The system's own libc is never touched. Downloaded .debs are kept in $CACHE, outside any checkout.
#
# Environment: APPTAINER_PREFIX (default /opt/whisper-hpc-apptainer), APPTAINER_CACHE
# (default /var/cache/whisper-hpc/apptainer), DEBIAN_MIRROR (default http://deb.debian.org/debian).
# If a working `apptainer` that is not ours is already on PATH, it is used as it is.
set -euo pipefail

PREFIX=${APPTAINER_PREFIX:-/opt/whisper-hpc-apptainer}
CACHE=${APPTAINER_CACHE:-/var/cache/whisper-hpc/apptainer}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LINK=/usr/local/bin/apptainer
HOST_PACKAGES=(squashfs-tools squashfuse fuse2fs fuse3 fuse-overlayfs uidmap debootstrap patchelf
               libseccomp2 libsqlite3-0 containernetworking-plugins libcap2-bin ca-certificates)
here=$(cd "$(dirname "$0")" && pwd)

say() { echo "install-apptainer: $*" >&2; }

existing=$(command -v apptainer || true)
if [ -n "$existing" ] && [ "$(readlink -f "$existing")" != "$PREFIX/usr/bin/apptainer" ] && apptainer version >/dev/null 2>&1; then
  say "using the Apptainer already installed at $existing ($(apptainer version))"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if [ -n "$existing" ] && apptainer version >/dev/null 2>&1; then
    say "ready: $(apptainer version) at $existing (installed and configured by root)"
    exit 0
  fi
  say "run as root once: it installs system packages, writes $PREFIX and configures the host"
  exit 1
fi

bash "$here/../../scripts/system-deps.sh" "${HOST_PACKAGES[@]}"

# --- 1. the two .debs, downloaded once into the cache --------------------------------------------
apt_dir=$CACHE/apt
apt_options=(-o "Dir::Etc=$apt_dir/etc" -o "Dir::State=$apt_dir/state" -o "Dir::State::status=$apt_dir/state/status"
             -o "Dir::Cache=$apt_dir/cache" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -q)
have_debs() { compgen -G "$CACHE/apptainer_*_amd64.deb" >/dev/null && compgen -G "$CACHE/libc6_*_amd64.deb" >/dev/null; }
if ! have_debs; then
  say "downloading sid's apptainer and trixie's libc6 into $CACHE"
  mkdir -p "$apt_dir/etc/apt.conf.d" "$apt_dir/etc/preferences.d" "$apt_dir/etc/sources.list.d" \
           "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
  : > "$apt_dir/state/status"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'deb [signed-by=%s] %s sid main\ndeb [signed-by=%s] %s trixie main\n' \
    "$keyring" "$MIRROR" "$keyring" "$MIRROR" > "$apt_dir/etc/sources.list"
  apt-get "${apt_options[@]}" update >/dev/null
  (cd "$CACHE" && apt-get "${apt_options[@]}" download apptainer/sid libc6/trixie >/dev/null)
  rm -rf "$apt_dir/state/lists" "$apt_dir/cache"   # 40 MB of package lists we no longer need
fi
apptainer_deb=$(ls "$CACHE"/apptainer_*_amd64.deb | sort -V | tail -n 1)
libc_deb=$(ls "$CACHE"/libc6_*_amd64.deb | sort -V | tail -n 1)
wanted="$(basename "$apptainer_deb") $(basename "$libc_deb")"

# --- 2. unpack into the private prefix, relocated, with the private loader -------------------------
if [ "$(cat "$PREFIX/.installed" 2>/dev/null)" != "$wanted" ] || ! "$PREFIX/usr/bin/apptainer" version >/dev/null 2>&1; then
  say "unpacking $wanted into $PREFIX"
  staging=$(mktemp -d "${PREFIX%/*}/.apptainer-staging.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  dpkg-deb -x "$apptainer_deb" "$staging/deb"
  dpkg-deb -x "$libc_deb" "$staging/glibc"
  # A relocated Apptainer (binary in PREFIX/usr/bin) reads PREFIX/usr/etc/apptainer, runs
  # PREFIX/usr/lib/x86_64-linux-gnu/apptainer/bin/starter (Debian's libexecdir) and mounts under
  # PREFIX/usr/var/lib/apptainer. The starter finds the prefix three levels above its real
  # location, so it really lives in usr/libexec/apptainer/bin and Debian's path is a symlink.
  mkdir -p "$staging/root/usr/bin" "$staging/root/usr/etc" "$staging/root/usr/lib/x86_64-linux-gnu" \
           "$staging/root/usr/libexec" "$staging/root/usr/var/lib"
  mv "$staging/deb/usr/bin/apptainer" "$staging/root/usr/bin/"
  ln -s apptainer "$staging/root/usr/bin/singularity"
  mv "$staging/deb/etc/apptainer" "$staging/root/usr/etc/"
  mv "$staging/deb/usr/lib/x86_64-linux-gnu/apptainer" "$staging/root/usr/libexec/"
  ln -s ../../libexec/apptainer "$staging/root/usr/lib/x86_64-linux-gnu/apptainer"
  mv "$staging/deb/var/lib/apptainer" "$staging/root/usr/var/lib/"
  mv "$staging/glibc" "$staging/root/glibc"
  libdir=$PREFIX/glibc/usr/lib/x86_64-linux-gnu
  for binary in "$staging/root/usr/bin/apptainer" "$staging/root/usr/libexec/apptainer/bin/starter"; do
    # DT_RPATH, not RUNPATH: apptainer re-executes itself with LD_LIBRARY_PATH set, which RUNPATH would lose to.
    patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" --force-rpath \
             --set-rpath "$libdir:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu" "$binary"
  done
  rm -rf "$PREFIX.old"
  [ -e "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
  mv "$staging/root" "$PREFIX"
  rm -rf "$PREFIX.old" "$staging"
  trap - EXIT
  echo "$wanted" > "$PREFIX/.installed"
fi
ln -sfn "$PREFIX/usr/bin/apptainer" "$LINK"

# --- 3. configuration this kind of host needs -----------------------------------------------------
conf=$PREFIX/usr/etc/apptainer/apptainer.conf
# Root here lacks CAP_SYS_RESOURCE: keeping the full set fails, so root keeps the capabilities granted below.
sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf"
bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
caps=$(capsh --decode="$bounding" | sed 's/.*=//' | tr ',' '\n' | grep -v '^cap_sys_resource$' | tr 'a-z' 'A-Z' | paste -sd, -)
"$PREFIX/usr/bin/apptainer" -s capability add --user root "$caps"

# --fakeroot builds need a subordinate id range for root.
for file in /etc/subuid /etc/subgid; do
  touch "$file"
  if ! grep -q '^root:' "$file"; then
    start=$(awk -F: 'BEGIN {end = 100000} {if ($2 + $3 > end) end = $2 + $3} END {print end}' "$file")
    echo "root:$start:65536" >> "$file"
  fi
done

# Unprivileged users mount SIF images with squashfuse, which needs to open /dev/fuse.
if [ -c /dev/fuse ]; then
  chmod 0666 /dev/fuse
else
  say "warning: /dev/fuse is absent: unprivileged users cannot mount SIF images (modprobe fuse)"
fi

say "ready: $("$LINK" version) at $LINK"
