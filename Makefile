# SceneSpell: `make serve` serves the committed models; `make test` runs the tests. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3000
DATA ?= ../shared/data/intel48.npz
THREADS ?= 2
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt
export BENTOML_DO_NOT_TRACK := true

.PHONY: help serve test train-cnn train-p2g export export-cnn export-p2g bench build containerize lint lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; set PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serving: requirements/serving.txt requirements/constraints.txt | $(PY)
	$(PIP) -r requirements/serving.txt
	@touch $@

$(VENV)/.full: $(VENV)/.serving requirements/training.txt requirements/dev.txt requirements/constraints.txt
	$(PIP) -r requirements/serving.txt -r requirements/training.txt -r requirements/dev.txt
	@touch $@

serve: $(VENV)/.serving ## serve the committed models of exports/ on 127.0.0.1:$(PORT)
	$(VENV)/bin/bentoml serve serving.service:SceneSpell --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.full ## install serving + training + dev, then run every test
	$(PY) -m pytest

lint: $(VENV)/.full ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

define need_data
	@test -e "$(DATA)" || { echo "error: $(DATA) not found: set DATA=path/to/intel48.npz or an image folder"; exit 1; }
endef

train-cnn: $(VENV)/.full ## the reference sweep: vanilla and bn-gap at lr 0.1, 0.01, 0.001, 40 epochs (resumable)
	$(need_data)
	$(PY) -m training.sweep_cnn --data "$(DATA)" --threads $(THREADS)

train-p2g: $(VENV)/.full ## both reference spellers, attention and vanilla, 20 epochs each (resumable)
	$(PY) -m training.train_p2g --model attention --threads $(THREADS) --resume
	$(PY) -m training.train_p2g --model vanilla --threads $(THREADS) --resume
	$(PY) -m training.p2g_report

export: export-cnn export-p2g ## export the trained models to exports/, checking ONNX Runtime against PyTorch

export-cnn: $(VENV)/.full
	$(need_data)
	$(PY) -m training.export_cnn --data "$(DATA)"

export-p2g: $(VENV)/.full
	$(PY) -m training.export_p2g

bench: $(VENV)/.full ## measure model and serving speed; writes bench/results.md
	@test -f bench/run.py || { echo "error: no benchmark yet (bench/run.py is missing)"; exit 1; }
	$(PY) -m bench.run

build: $(VENV)/.serving ## build the bento (offline)
	$(VENV)/bin/bentoml build --output tag

containerize: build ## build the bento's OCI image (needs docker or podman)
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || command -v podman >/dev/null || \
		{ echo "error: no container engine: install docker (with a running daemon) or podman"; exit 1; }
	$(VENV)/bin/bentoml containerize scenespell:latest $$(command -v podman >/dev/null && echo --backend podman)

lock: $(VENV)/.full ## rewrite requirements/constraints.txt from the installed environment
	{ sed -n '1,2p' requirements/constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^onnxruntime-gpu=='; } > requirements/constraints.tmp
	mv requirements/constraints.tmp requirements/constraints.txt

clean: ## remove caches and built bentos (keeps .venv, runs/ and exports/)
	rm -rf .pytest_cache .ruff_cache build
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
