
# The batch report (whisper_hpc/batch/report/): its test renders the HTML page in Debian's
# headless Chromium, with no network, and checks the screenshot. Installed once, idempotently.
.PHONY: chromium-installed
TEST_DEPS += chromium-installed

chromium-installed:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -ne 0 ]; then echo "report tests need Chromium: run as root: apt-get install chromium" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=600 -qq update && \
	  apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends chromium >/dev/null; }
	@chromium --version >/dev/null 2>&1 || { echo "chromium is installed but does not start: try chromium --version" >&2; exit 1; }
