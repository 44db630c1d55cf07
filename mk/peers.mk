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
