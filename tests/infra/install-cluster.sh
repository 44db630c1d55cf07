#!/usr/bin/env bash
# Install what the cluster test tier needs: Slurm (controller, node daemon, clients, accounting
# daemon), MUNGE, MariaDB (for slurmdbd, so `sacct` works) and Lmod. Idempotent: installs only
# what is missing. The packages' own services are never started here; tests/infra/cluster.py runs
# private copies of the daemons and stops them by PID.
set -euo pipefail
wanted=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server lmod)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-cluster: please install as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install-cluster: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Other installs may hold the dpkg lock for a while on a shared machine: wait for it.
apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
"${apt[@]}" update
# policy-rc.d 101: the packages' init scripts must not start system-wide daemons during install.
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; own_policy=true
fi
trap '$own_policy && rm -f "$policy"' EXIT
"${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
