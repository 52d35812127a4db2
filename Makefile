# The README's commands. Every target sets up what it needs (idempotent).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SHAPES  := data/shapes
DEMO    := runs/demo

.PHONY: setup demo test bench check-cuda lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-build-isolation -e '.[dev]'
	@touch $(STAMP)

$(SHAPES)/meta.json: | $(STAMP)
	$(BIN)/python datasets_prep/make_shapes.py --out $(SHAPES)

# synthetic data -> training -> COCO evaluation -> one instruction query, on CPU
demo: $(STAMP) $(SHAPES)/meta.json
	$(BIN)/python tools/train.py experiment=shapes_tiny output_dir=$(DEMO)
	$(BIN)/python tools/eval.py checkpoint=$(DEMO)/checkpoint task=detection data=shapes output_dir=$(DEMO)
	$(BIN)/python tools/infer.py checkpoint=$(DEMO)/checkpoint \
		image=$$(ls $(SHAPES)/val2017/*.png | head -1) \
		instruction="Find every object of {'circle': <c0>, 'square': <c1>, 'triangle': <c2>, 'star': <c3>, 'hexagon': <c4>, 'ellipse': <c5>} in <image>, each as (c, x1, y1, x2, y2) with coordinates from 0 to 1024." \
		output=$(DEMO)/query.json visualize=$(DEMO)/query.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python tools/bench_decoding.py
	$(BIN)/python tools/bench_msda.py

# compile the CUDA sources with nvcc, no GPU needed
check-cuda: $(STAMP)
	bash ops/check_cuda.sh

lint: $(STAMP)
	$(BIN)/ruff check visionllm tools datasets_prep tests

clean:
	rm -rf $(VENV) build *.egg-info visionllm/*.so
