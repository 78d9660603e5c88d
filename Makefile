# REACT on ELEVATER: evaluation harness and training module.
# Set-up is two commands: `make install` then `make test`. Everything runs inside ./.venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

MODEL ?= react_vitb32_CLIP
DATASET ?= imagenet-1k
DATA_ROOT ?= ./data
PROTOCOL ?= elevater
RESULTS ?= ./results
EVAL_FLAGS ?=
DEMO_DIR ?= ./demo

.PHONY: install test demo eval eval-all validate ls bench clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)  ## create .venv and install the project with its dev tools (torch 2.14.1 / torchvision 0.29.1 pinned)
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -c "import torch, open_clip, vision_datasets, vision_evaluation; print('installed: torch', torch.__version__, '| open_clip', open_clip.__version__)"

test:  ## the CPU test suite (tiny models, generated data)
	$(PY) -m pytest -q

validate:  ## check every model and dataset card strictly
	$(PY) -m harness validate

ls:  ## list model and dataset cards
	$(PY) -m harness ls

eval:  ## one model on one dataset: make eval MODEL=... DATASET=... DATA_ROOT=...
	$(PY) -m harness eval --model $(MODEL) --dataset $(DATASET) --data-root $(DATA_ROOT) --protocol $(PROTOCOL) --results $(RESULTS) $(EVAL_FLAGS)

eval-all:  ## one model on ImageNet-1K + the 20 ELEVATER datasets: make eval-all MODEL=react_vitb32_CLIP DATA_ROOT=...
	$(PY) -m harness eval-all --model $(MODEL) --data-root $(DATA_ROOT) --protocol $(PROTOCOL) --results $(RESULTS) $(EVAL_FLAGS)

demo:  ## offline demo: generate a tiny ELEVATER-format suite, evaluate a tiny model on all 21 cards, print a table
	$(PY) -m harness make-demo-data --out $(DEMO_DIR)/data
	$(PY) -m harness eval-all --model tiny_demo_clip --data-root $(DEMO_DIR)/data --results $(DEMO_DIR)/results --no-progress
	$(PY) -m harness table --results $(DEMO_DIR)/results

bench:  ## throughput benchmarks (pytest-benchmark); prints images/s and ratios to the forward-only limit
	$(PY) -m pytest benchmarks -q -s --benchmark-enable -p no:cacheprovider

clean-demo:
	rm -rf $(DEMO_DIR)
