# Two commands do all the set-up on a fresh machine:
#   make demo   the whole pipeline on the bundled sample video (no camera, no ../shared needed)
#   make test   the test suite (installs the workstation extras, TensorFlow included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
OUT    ?= out/demo

.PHONY: demo test model bench clean

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

# Rebuild the bundled default model from the real mini-Xception in ../shared (deterministic:
# fixed calibration sample and seed). Writes the model and the figures its model card quotes.
model: $(VENV)/.dev-installed
	$(BIN)/fer-convert $(SHARED)/data/models/mini_xception_fer2013.hdf5 -o models/fer_default.tflite \
	  --quantize int8 --calibration $(SHARED)/data/fer2013/train --calibration-samples 500 --seed 0 \
	  --labels fer2013 --input-range=-1,1 \
	  --evaluate $(SHARED)/data/fer2013/test --report models/fer_default_report.json \
	  --confusion-png models/fer_default_confusion.png

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/pipeline.py $(SHARED)/data/videos/all_emo.mp4

clean:
	rm -rf $(VENV) out *.egg-info
