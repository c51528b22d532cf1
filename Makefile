# Two commands do all the set-up on a fresh machine:
#   make demo   the whole pipeline on the bundled sample video (no camera, no ../shared needed)
#   make test   the test suite (installs the workstation extras, TensorFlow included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
OUT    ?= out/demo

.PHONY: demo test model bench pi-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.device-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[device]'
	touch $@

$(VENV)/.dev-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.device-installed

demo: $(VENV)/.device-installed
	$(BIN)/fer-edge run --source samples/sample_faces.mp4 --output $(OUT)
	@echo "annotated video: $(OUT)/video/   emotion log: $(OUT)/csv/"

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

# Rebuild the bundled models from their Keras sources (deterministic: fixed calibration sample and
# seed), with the reports and confusion matrices their model card quotes. Needs ../shared (FER2013
# to calibrate and evaluate on; the mini-Xception HDF5). The default is fer-edge's own network,
# trained by fer-train (models/trained/TRAINING.md); mini-Xception is the bundled alternative.
CONVERT_INT8 = $(BIN)/fer-convert --quantize int8 --calibration $(SHARED)/data/fer2013/train \
	  --calibration-samples 500 --seed 0 --evaluate $(SHARED)/data/fer2013/test

model: $(VENV)/.dev-installed
	$(CONVERT_INT8) models/trained/fer_edge_cnn.keras -o models/fer_default.tflite \
	  --labels kaggle --input-range 0,1 \
	  --report models/fer_default_report.json --confusion-png models/fer_default_confusion.png
	$(CONVERT_INT8) $(SHARED)/data/models/mini_xception_fer2013.hdf5 -o models/mini_xception_int8.tflite \
	  --labels fer2013 --input-range=-1,1 \
	  --report models/mini_xception_report.json --confusion-png models/mini_xception_confusion.png

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/pipeline.py $(SHARED)/data/videos/all_emo.mp4

# The README's Pi route on an emulated Raspberry Pi OS (Debian arm64 root through qemu-user), each
# output compared with this machine's; needs root. Roots and caches: /var/cache/fer-edge-pi-check.
SUITE ?= bookworm
pi-check: $(VENV)/.device-installed
	$(BIN)/python tools/pi_check.py --suite $(SUITE) --host-bin $(BIN) --shared $(SHARED)

clean:
	rm -rf $(VENV) out *.egg-info
