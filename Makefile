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

# A second `make demo` replaces the first one's video and CSV, so `fer-edge summary --output $(OUT)`
# counts the demo once.
demo: $(VENV)/.device-installed
	rm -rf $(OUT)/video $(OUT)/csv
	$(BIN)/fer-edge run --source samples/sample_faces.mp4 --output $(OUT)
	@echo "annotated video: $(OUT)/video/   emotion log: $(OUT)/csv/"

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

# Rebuild the bundled models from their Keras sources (deterministic: fixed calibration sample and
# seed), with the reports and confusion matrices their model card quotes. Needs ../shared (FER2013
# to calibrate on; PublicTest rows with FER+'s votes to evaluate on; the mini-Xception HDF5). The
# default is fer-edge's own network trained on FER+'s ten votes per face (models/trained/ferplus/);
# the FER2013-label model it replaced is kept in models/trained/fer2013/; mini-Xception is the
# bundled alternative.
CONVERT_INT8 = $(BIN)/fer-convert --quantize int8 --calibration $(SHARED)/data/fer2013/train \
	  --calibration-samples 500 --seed 0
EVALUATE_FERPLUS = --evaluate $(SHARED)/data/fer2013_trainval.csv.gz --usage PublicTest \
	  --ferplus $(SHARED)/data/ferplus_trainval.csv

model: $(VENV)/.dev-installed
	$(CONVERT_INT8) $(EVALUATE_FERPLUS) models/trained/ferplus/cycle1_calibrated/fer_edge_cnn.keras \
	  -o models/fer_default.tflite --labels kaggle --input-range 0,1 \
	  --report models/fer_default_report.json --confusion-png models/fer_default_confusion.png
	$(CONVERT_INT8) --evaluate $(SHARED)/data/fer2013/test models/trained/fer_edge_cnn.keras \
	  -o models/trained/fer2013/fer_edge_cnn_int8.tflite --labels kaggle --input-range 0,1 \
	  --report models/trained/fer2013/report.json --confusion-png models/trained/fer2013/confusion.png
	$(CONVERT_INT8) --evaluate $(SHARED)/data/fer2013/test $(SHARED)/data/models/mini_xception_fer2013.hdf5 \
	  -o models/mini_xception_int8.tflite --labels fer2013 --input-range=-1,1 \
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
