# Open OnDemand app (ondemand/, whisper_hpc/ondemand.py): its tests render the ERB templates with
# Debian's real Ruby, as OOD would. Installed once, idempotently.
.PHONY: ruby-installed
TEST_DEPS += ruby-installed

ruby-installed:
	@command -v ruby >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -ne 0 ]; then echo "ondemand tests need Ruby: run as root: apt-get install ruby" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 -qq update && \
	  apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends ruby >/dev/null; }
	@ruby -e 'require "erb"; require "shellwords"; require "psych"; require "json"'
