# The peers' own argument parsers (requirements/peers.lock), for tests/test_peer_flags.py: installed
# without their dependencies into a folder of their own, so our locks stay clean. openai-whisper's
# parser comes from the pinned openai-whisper in the whisper venv.
PEER_PARSERS := $(BUILD)/peers/parsers
.PHONY: peer-parsers
TEST_DEPS += peer-parsers

peer-parsers: $(PEER_PARSERS)/.installed

$(PEER_PARSERS)/.installed: requirements/peers.lock $(VENV)/.installed
	rm -rf $(PEER_PARSERS)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --target $(PEER_PARSERS) -r requirements/peers.lock
	touch $@

# whisper.cpp itself (pywhispercpp, requirements/ggml-test.lock) for tests/test_ggml.py: it loads the
# ggml file `whisper-models export --format ggml` writes. Installed with its pure-Python dependencies
# into a folder of its own, outside our venv; the test puts it on sys.path of a child process.
GGML_TEST := $(BUILD)/peers/ggml-test
.PHONY: ggml-test
TEST_DEPS += ggml-test

ggml-test: $(GGML_TEST)/.installed

$(GGML_TEST)/.installed: requirements/ggml-test.lock $(VENV)/.installed
	rm -rf $(GGML_TEST)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --target $(GGML_TEST) -r requirements/ggml-test.lock
	touch $@

# The peers themselves, run side by side with whisper-hpc by tests/bench_peers.py: whisper-ctranslate2,
# whisperx, pywhispercpp (whisper.cpp) and openai-whisper in a venv of their own (requirements/
# peers-bench.lock, which includes the whisper, diarization and convert locks), so ours stay clean.
PEERS_VENV := $(BUILD)/peers/venv
BENCH_PEERS_ARGS ?=
.PHONY: peers-venv bench-peers

peers-venv: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: requirements/peers-bench.lock requirements/whisper.lock requirements/diarization.lock \
		requirements/convert.lock requirements/tools.lock
	rm -rf $(PEERS_VENV)
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/tools.lock
	$(PEERS_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements/peers-bench.lock
	touch $@

bench-peers: venv models $(SAMPLE) peers-venv
	SHARED_DATA=$(SHARED)/data PEERS_VENV=$(PEERS_VENV) $(BIN)/python tests/bench_peers.py $(BENCH_PEERS_ARGS)
