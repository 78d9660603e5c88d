# REACT on ELEVATER: evaluation harness and training module.
# Set-up is two commands: `make install` then `make test`. Everything runs inside ./.venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

MODEL ?= react_vitb32_CLIP
MODELS ?= vitb32_CLIP,react_vitb32_CLIP
DATASET ?= imagenet-1k
DATA_ROOT ?= ./data
PROTOCOL ?= elevater
RESULTS ?= ./results
EVAL_FLAGS ?=
DATASETS ?=
PREPARE_FLAGS ?=
DEMO_DIR ?= ./demo
REPORT_NAME ?= latest
REPORT_FLAGS ?=

# Training (REACT README recipes). Paths and GPU count are variables.
TRAIN_DATA ?= /path/to/imagenet_10m/{00000..00897}.tar
TRAIN_NUM_SAMPLES ?= 8530639
IMAGENET_VAL ?= /path/to/imagenet/val/
NGPUS ?= 8
BASE_CKPT ?= ./checkpoints/ViT-B-32.pt
BASE_CARD ?= vitb32_CLIP
TRAIN_FLAGS ?=
REACT_AUG := --aug-cfg use_timm=True scale='(0.08,1.0)' ratio='(0.75,1.3333333)' hflip=0.5 interpolation=bicubic \
	color_jitter=0.4 "auto_augment='rand-m9-mstd0.5-inc1'" re_prob=0.25 re_count=1
# The tiny CPU variant (tests, demo): NPROC=2 runs it under torchrun with gloo.
NPROC ?= 1
TINY_EPOCHS ?= 8
# the tiny gated-image recipe (train-tiny; tests pass it to train-gated as TRAIN_FLAGS='$$(TINY_RECIPE) ...')
TINY_RECIPE = --warmup 8 --batch-size=64 --lr=2e-3 --wd=0.1 --epochs=$(TINY_EPOCHS) --workers=2 --precision fp32 \
	--model react_tiny-ViT-32px --lock-image-unlock-gated --lock-text
TINY_LAUNCH := $(if $(filter 1,$(NPROC)),$(PY) -m training.main,$(VENV)/bin/torchrun --nproc_per_node $(NPROC) -m training.main)

.PHONY: install test test-fast dataset-cards demo prepare eval eval-all sweep validate ls bench clean-demo report crosscheck base-checkpoint train-gated train-locked train-tiny cli-docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: $(PY)  ## create .venv and install the project with its dev tools (torch 2.14.1 / torchvision 0.29.1 pinned)
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -c "import torch, open_clip, vision_datasets, vision_evaluation; print('installed: torch', torch.__version__, '| open_clip', open_clip.__version__)"

test:  ## the CPU test suite (tiny models, generated data): everything, as CI runs it
	$(PY) -m pytest -q

test-fast:  ## the suite without the tests marked slow (subprocesses, torchrun, make, Chromium, kill loops)
	$(PY) -m pytest -q -m "not slow"

cli-docs:  ## regenerate docs/cli.md from the command line's own --help
	$(PY) scripts/make_cli_docs.py

dataset-cards:  ## regenerate harness/cards/dataset_yamls/ from reference/elevater_datasets.json
	$(PY) scripts/make_dataset_cards.py

validate:  ## check every model and dataset card strictly
	$(PY) -m harness validate

ls:  ## list model and dataset cards
	$(PY) -m harness ls

eval:  ## one model on one dataset: make eval MODEL=... DATASET=... DATA_ROOT=...
	$(PY) -m harness eval --model $(MODEL) --dataset $(DATASET) --data-root $(DATA_ROOT) --protocol $(PROTOCOL) --results $(RESULTS) $(EVAL_FLAGS)

prepare:  ## download the ELEVATER test sets into DATA_ROOT (resumable, verified): make prepare DATA_ROOT=... [DATASETS=a,b]
	$(PY) -m harness prepare --data-root $(DATA_ROOT) $(if $(DATASETS),--datasets $(DATASETS),) $(PREPARE_FLAGS)

sweep:  ## many models on ImageNet-1K + ELEVATER, each dataset decoded once: make sweep MODELS=a,b,c DATA_ROOT=...
	$(PY) -m harness sweep --models $(MODELS) --data-root $(DATA_ROOT) --protocol $(PROTOCOL) --results $(RESULTS) $(if $(DATASETS),--datasets $(DATASETS),) $(EVAL_FLAGS)

eval-all:  ## one model on ImageNet-1K + the 20 ELEVATER datasets: make eval-all MODEL=react_vitb32_CLIP DATA_ROOT=...
	$(PY) -m harness eval-all --model $(MODEL) --data-root $(DATA_ROOT) --protocol $(PROTOCOL) --results $(RESULTS) $(EVAL_FLAGS)

demo:  ## offline demo: tiny ELEVATER-format suite, a tiny baseline vs a tiny gated-image model trained here, report
	$(PY) -m harness make-demo-data --out $(DEMO_DIR)/data
	$(PY) -m harness eval-all --model tiny_demo_clip --data-root $(DEMO_DIR)/data --results $(DEMO_DIR)/results --no-progress
	$(MAKE) --no-print-directory train-tiny
	$(PY) -m harness crosscheck --model tiny_demo_clip --data-root $(DEMO_DIR)/data --results $(DEMO_DIR)/results --no-progress
	$(PY) -m harness table --results $(DEMO_DIR)/results --protocol elevater
	$(PY) -m harness report --name demo --out $(DEMO_DIR)/reports --results $(DEMO_DIR)/results \
	    --logs $(DEMO_DIR)/logs --model-cards $(DEMO_DIR)/model_cards --title "REACT / ELEVATER demo report (tiny models, generated data)"

report:  ## report of ./results (and ./logs when present): make report [RESULTS=...] [REPORT_NAME=...]
	$(PY) -m harness report --name $(REPORT_NAME) --results $(RESULTS) $(if $(wildcard ./logs),--logs ./logs,) $(REPORT_FLAGS)

crosscheck:  ## both protocols on the same weights and data: make crosscheck MODEL=... DATA_ROOT=...
	$(PY) -m harness crosscheck --model $(MODEL) --data-root $(DATA_ROOT) --results $(RESULTS) $(EVAL_FLAGS)

bench:  ## benchmarks (pytest-benchmark): zero-shot throughput and training steps, with ratios measured in the same run (docs/benchmarks.md)
	$(PY) -m pytest benchmarks -q -s --benchmark-enable -p no:cacheprovider

base-checkpoint:  ## the REACT README's --resume base: OpenAI ViT-B/32 as a plain state dict at $(BASE_CKPT)
	$(PY) -m training.export_base --card $(BASE_CARD) --out $(BASE_CKPT)

# NGPUS=1 runs one plain process (torchrun's own parser rejects --logs in the training flags: it is a prefix of
# torchrun's --logs-specs).
TRAIN_LAUNCH = $(if $(filter 1,$(NGPUS)),$(PY) -m training.main,$(VENV)/bin/torchrun --nproc_per_node $(NGPUS) -m training.main)
# The flags both REACT README recipes share, in that README's order.
REACT_RECIPE_DATA = --train-data '$(TRAIN_DATA)' --dataset-type webdataset --train-num-samples $(TRAIN_NUM_SAMPLES) \
	--imagenet-val=$(IMAGENET_VAL) --warmup 5000 --batch-size=512 --grad-checkpointing
REACT_RECIPE_OPT := --wd=0.1 --epochs=32 --workers=4

train-gated:  ## REACT gated-image locked-text tuning (REACT README recipe, 8x V100): make train-gated PAIRS_DIR=... (or TRAIN_DATA=...) IMAGENET_VAL=... NGPUS=8
	$(PAIRS_CHECK)$(TRAIN_LAUNCH) \
	    --save-frequency 1 --zeroshot-frequency 1 \
	    --name React_gi-clip_b32-lr_5e-4-b_512-grad_ckpt-v100_8-aug_on-p_amp-wds-wk_4 \
	    $(REACT_RECIPE_DATA) --lr=5e-4 $(REACT_RECIPE_OPT) \
	    --model react_ViT-B-32-quickgelu --resume $(BASE_CKPT) --lock-image-unlock-gated --lock-text \
	    $(REACT_AUG) $(TRAIN_FLAGS)

train-locked:  ## REACT locked-text tuning (REACT README recipe, 8x V100): make train-locked PAIRS_DIR=... (or TRAIN_DATA=...) IMAGENET_VAL=... NGPUS=8
	$(PAIRS_CHECK)$(TRAIN_LAUNCH) \
	    --save-frequency 1 --zeroshot-frequency 1 --report-to wandb \
	    --name React_lt-clip_b32-lr_5e-5-b_512-grad_ckpt-v100_8-aug_on-p_amp-wds-wk_4 \
	    $(REACT_RECIPE_DATA) --lr=5e-5 $(REACT_RECIPE_OPT) \
	    --model ViT-B-32-quickgelu --resume $(BASE_CKPT) --lock-text \
	    $(REACT_AUG) $(TRAIN_FLAGS)

train-tiny:  ## the gated-image recipe on a tiny model and generated shards, on CPU (~2 min), then evaluates its card
	$(PY) -m harness make-demo-data --out $(DEMO_DIR)/data
	$(PY) -m harness make-demo-shards --out $(DEMO_DIR)/shards --shards 16 --samples-per-shard 256
	$(PY) -m training.export_base --card tiny_demo_clip --out $(DEMO_DIR)/checkpoints/tiny-base.pt
	mkdir -p $(DEMO_DIR)/model_cards
	$(TINY_LAUNCH) \
	    --save-frequency 2 --zeroshot-frequency 2 \
	    --name tiny_gated_image --logs $(DEMO_DIR)/logs --resume latest --pretrained $(DEMO_DIR)/checkpoints/tiny-base.pt \
	    --train-data '$(DEMO_DIR)/shards/{00000..00015}.tar' --dataset-type webdataset --train-num-samples 4096 \
	    --zeroshot-dataset cifar-10 --zeroshot-data-root $(DEMO_DIR)/data \
	    $(TINY_RECIPE) \
	    --model-card-dir $(DEMO_DIR)/model_cards --base-model-card tiny_demo_clip \
	    $(REACT_AUG) $(TRAIN_FLAGS)
	$(PY) -m harness eval-all --model $(DEMO_DIR)/model_cards/tiny_gated_image.yaml --data-root $(DEMO_DIR)/data --results $(DEMO_DIR)/results --no-progress

clean-demo:
	rm -rf $(DEMO_DIR)

# Retrieved pairs (REACT README "Download Retrieved Pairs"): REACT's parquet -> the real img2dataset in its own venv
# -> webdataset shards + availability.json (docs/pairs.md). `make pairs PAIRS_DIR=d && make train-gated PAIRS_DIR=d`.
PAIRS_VENV ?= .venv-pairs
IMG2DATASET_VERSION := 1.47.0
PAIRS_DIR ?=
PAIRS_REPO ?= react-vl/react-retrieval-datasets
PAIRS_FILE ?= imagenet_10m.parquet
PAIRS_PARQUET ?= $(PAIRS_DIR)/$(PAIRS_FILE)
PAIRS_FLAGS ?=
.PHONY: install-pairs pairs pairs-stats
# With PAIRS_DIR, train-gated/train-locked read --train-data and --train-num-samples from PAIRS_DIR/availability.json;
# TRAIN_DATA and TRAIN_NUM_SAMPLES given (command line or environment) win, but only both together: one of them
# from the pairs set and the other from the user would train on shards with another set's sample count.
PAIRS_GIVEN = $(filter-out file default undefined,$(origin TRAIN_DATA))$(filter-out file default undefined,$(origin TRAIN_NUM_SAMPLES))
PAIRS_MIX = $(and $(PAIRS_DIR),$(filter-out file default undefined,$(origin TRAIN_DATA) $(origin TRAIN_NUM_SAMPLES)),$(filter file,$(origin TRAIN_DATA) $(origin TRAIN_NUM_SAMPLES)))
PAIRS_MIX_REFUSAL = { echo "PAIRS_DIR=$(PAIRS_DIR) with only one of TRAIN_DATA / TRAIN_NUM_SAMPLES given: give both, or neither (both then come from $(PAIRS_DIR)/availability.json)" >&2; exit 2; } &&
PAIRS_CHECK = $(if $(PAIRS_MIX),$(PAIRS_MIX_REFUSAL) ,$(if $(and $(PAIRS_DIR),$(if $(PAIRS_GIVEN),,1)),$(PY) -m training.pairs show $(PAIRS_DIR) && ,))
ifneq ($(PAIRS_DIR),)
ifeq ($(origin TRAIN_DATA)$(origin TRAIN_NUM_SAMPLES),filefile)
TRAIN_DATA = $(shell $(PY) -m training.pairs show $(PAIRS_DIR) --field train_data_pattern 2>/dev/null)
TRAIN_NUM_SAMPLES = $(shell $(PY) -m training.pairs show $(PAIRS_DIR) --field successes 2>/dev/null)
endif
endif

install-pairs:  ## img2dataset==1.47.0 in its own venv (.venv-pairs): it pins webdataset<0.3, the project needs >=1.0
	test -x $(PAIRS_VENV)/bin/python || $(PYTHON) -m venv $(PAIRS_VENV)
	$(PAIRS_VENV)/bin/pip install --quiet --upgrade pip
	$(PAIRS_VENV)/bin/pip install --quiet img2dataset==$(IMG2DATASET_VERSION)
	$(PAIRS_VENV)/bin/img2dataset --help >/dev/null 2>&1 && echo "installed: img2dataset $(IMG2DATASET_VERSION) in $(PAIRS_VENV)"

pairs:  ## REACT's pairs parquet -> img2dataset shards -> availability.json: make pairs PAIRS_DIR=... [PAIRS_FLAGS='--processes 64 --threads 12']
	@test -n "$(PAIRS_DIR)" || { echo "make pairs needs PAIRS_DIR=<folder for the parquet and shards>"; exit 2; }
	$(if $(filter file,$(origin PAIRS_PARQUET)),$(PY) -m training.pairs fetch --out $(PAIRS_DIR) --repo $(PAIRS_REPO) --file $(PAIRS_FILE),@echo "PAIRS_PARQUET=$(PAIRS_PARQUET) given: not fetching $(PAIRS_REPO)")
	$(PY) -m training.pairs download --parquet $(PAIRS_PARQUET) --out $(PAIRS_DIR) $(PAIRS_FLAGS)
	$(PY) -m training.pairs stats $(PAIRS_DIR)

pairs-stats:  ## recount a pairs download: make pairs-stats PAIRS_DIR=...
	$(PY) -m training.pairs stats $(PAIRS_DIR)

# Customize for any target (REACT's retrieval stage, docs/retrieval.md): retrieve pairs for a dataset card from an
# index (python -m retrieval embed/index, or a clip-retrieval folder) -> download them (training.pairs) -> gated-image
# tuning -> the base and the tuned model evaluated on the card -> a report with "Retrieved for <card>".
#   make customize DATASET=my_card.yaml INDEX=./index [DATA_ROOT=.] [QUERY_FLAGS='--per-class 200'] [NGPUS=8 ...]
INDEX ?=
CUSTOM_NAME ?= customized_$(basename $(notdir $(DATASET)))
CUSTOM_DIR ?= ./customize/$(CUSTOM_NAME)
QUERY_FLAGS ?=
CUSTOMIZE_TRAIN ?= train-gated
# the download is cut into at least CUSTOM_RANKS x CUSTOM_WORKERS shards (every training data worker needs one)
CUSTOM_RANKS ?= $(if $(filter train-tiny-pairs,$(CUSTOMIZE_TRAIN)),$(NPROC),$(NGPUS))
CUSTOM_WORKERS ?= $(if $(filter train-tiny-pairs,$(CUSTOMIZE_TRAIN)),1,4)
TINY_BASE_CKPT ?= $(DEMO_DIR)/checkpoints/tiny-base.pt
# a card of your own (root_folder absolute) needs no data root: the current folder serves when DATA_ROOT is absent
CUSTOM_DATA_ROOT = $(if $(wildcard $(DATA_ROOT)),$(DATA_ROOT),.)
RETRIEVAL_DEMO_DIR ?= ./demo_retrieval
.PHONY: customize train-tiny-pairs retrieval-demo

customize:  ## retrieve -> download -> train-gated -> eval -> report for a dataset card: make customize DATASET=my_card.yaml INDEX=./index
	@test -n "$(INDEX)" || { echo "make customize needs INDEX=<index folder> (python -m retrieval embed + index)"; exit 2; }
	$(PY) -m retrieval query --index $(INDEX) --dataset $(DATASET) --out $(CUSTOM_DIR)/pairs.parquet --no-progress $(QUERY_FLAGS)
	nps=$$($(PY) -m training.pairs shard-size --parquet $(CUSTOM_DIR)/pairs.parquet --ranks $(CUSTOM_RANKS) --workers $(CUSTOM_WORKERS)) && \
	    $(PY) -m training.pairs download --parquet $(CUSTOM_DIR)/pairs.parquet --out $(CUSTOM_DIR)/pairs $$nps $(PAIRS_FLAGS)
	$(PY) -m training.pairs stats $(CUSTOM_DIR)/pairs
	$(MAKE) --no-print-directory $(CUSTOMIZE_TRAIN) PAIRS_DIR=$(CUSTOM_DIR)/pairs IMAGENET_VAL= \
	    TRAIN_FLAGS="--name $(CUSTOM_NAME) --logs $(CUSTOM_DIR)/logs --model-card-dir $(CUSTOM_DIR)/model_cards \
	    --base-model-card $(BASE_CARD) --zeroshot-dataset $(DATASET) --zeroshot-data-root $(CUSTOM_DATA_ROOT) $(TRAIN_FLAGS)"
	$(PY) -m harness eval --model $(BASE_CARD) --dataset $(DATASET) --data-root $(CUSTOM_DATA_ROOT) --results $(CUSTOM_DIR)/results --no-progress
	$(PY) -m harness eval --model $(CUSTOM_DIR)/model_cards/$(CUSTOM_NAME).yaml --dataset $(DATASET) --data-root $(CUSTOM_DATA_ROOT) --results $(CUSTOM_DIR)/results --no-progress
	$(PY) -m harness report --name $(CUSTOM_NAME) --out $(CUSTOM_DIR)/reports --results $(CUSTOM_DIR)/results \
	    --logs $(CUSTOM_DIR)/logs --model-cards $(CUSTOM_DIR)/model_cards --retrieved $(CUSTOM_DIR)/pairs.json \
	    --title "Customized for $(basename $(notdir $(DATASET)))"

train-tiny-pairs:  ## the gated-image recipe on a tiny model and PAIRS_DIR's shards, on CPU (customize's demo trainer)
	$(TINY_LAUNCH) --save-frequency $(TINY_EPOCHS) --zeroshot-frequency $(TINY_EPOCHS) --resume latest \
	    --pretrained $(TINY_BASE_CKPT) --train-data '$(TRAIN_DATA)' --dataset-type webdataset \
	    --train-num-samples $(TRAIN_NUM_SAMPLES) --warmup 4 --batch-size=16 --lr=2e-3 --wd=0.1 --epochs=$(TINY_EPOCHS) \
	    --workers=1 --precision fp32 --model react_tiny-ViT-32px --lock-image-unlock-gated --lock-text \
	    $(REACT_AUG) $(TRAIN_FLAGS)

retrieval-demo:  ## offline: generated corpus -> embed -> index -> make customize (loopback download, tiny training) -> report
	$(PY) -m retrieval demo --out $(RETRIEVAL_DEMO_DIR)
