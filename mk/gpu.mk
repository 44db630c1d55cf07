# `make gpu-check` on a node with a GPU: doctor, both engines in float16/int8_float16, batched
# inference, diarization, two workers on one GPU, the out-of-memory back-off and the image with
# --nv, in one run with one report (build/gpu-check/report.txt). Without a GPU it exits 2.
.PHONY: gpu-check

gpu-check: venv models $(SAMPLE) diarization-venv diarization-pipeline
	SHARED_DATA=$(SHARED)/data timeout 480 $(BIN)/python scripts/gpu-check.py --report $(BUILD)/gpu-check
