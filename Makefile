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

.PHONY: help serve test train-cnn train-p2g train-resnet train-resnet-distilled train-resnet-ensemble train-resnet-trivial train-resnet-trivial-long train-resnet-long train-resnet-mixup train-resnet-narrow train-resnet-half train-resnet-half-cutout train-resnet-half-resized train-resnet-half-nosmooth train-resnet-half-trainval train-resnet-half-deep train-resnet-half-hires train-resnet-half-hires-bf16 train-resnet-narrow-hires-bf16 train-resnet-hires-bf16 train-resnet-half-hires-sam ensemble-cnn ensemble-cnn-hires ensemble-cnn-bf16 ensemble-cnn-served train-transformer train-attention-large train-attention-deep train-attention-deep-seed1 train-attention-distilled train-attention-stress train-attention-deep-stress train-attention-deep-stress-seed1 train-attention-large-stress ensemble-p2g ensemble-p2g-stress quantize-p2g quantize-p2g-single pair-p2g pair-p2g-stress beam-p2g compare-p2g peer-p2g peer-p2g-stress export export-cnn export-p2g bench build containerize container-smoke lint lock clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; set PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serving: requirements/serving.txt requirements/constraints.txt | $(PY)
	$(PIP) -r requirements/serving.txt
	@touch $@

$(VENV)/.full: $(VENV)/.serving requirements/training.txt requirements/dev.txt requirements/peer.txt \
		requirements/constraints.txt
	$(PIP) -r requirements/serving.txt -r requirements/training.txt -r requirements/dev.txt \
		$$([ "$$(uname -sm)" = "Linux x86_64" ] && echo -r requirements/peer.txt)  # the peer's wheel: x86_64 Linux only
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

RESNET := $(PY) -m training.train_cnn --network resnet --lr 0.2 --epochs 45 --label-smoothing 0.1 --schedule onecycle \
	--nesterov --weight-decay 5e-4 --ema 0.998 --data "$(DATA)" --threads $(THREADS) --resume

train-resnet: $(VENV)/.full ## our scene CNN: residual network, flips and crops, one-cycle SGD, 45 epochs (resumable)
	$(need_data)
	$(RESNET) --augment flip-crop --name resnet
	$(PY) -m training.cnn_report

train-resnet-distilled: $(VENV)/.full ## the same network distilled from the `resnet` run (trains it first if missing)
	$(need_data)
	test -e runs/cnn/resnet/best.pt || $(MAKE) train-resnet
	$(RESNET) --augment flip-crop --teacher runs/cnn/resnet/best.pt --distill 0.5 --temperature 2 --name resnet-distilled
	$(PY) -m training.cnn_report

ENSEMBLE := runs/cnn/resnet/best.pt,runs/cnn/resnet-distilled/best.pt,runs/cnn/resnet-trivial/best.pt

train-resnet-ensemble: $(VENV)/.full ## the same network distilled from the logit average of the three runs above (trains any missing)
	$(need_data)
	test -e runs/cnn/resnet/best.pt || $(MAKE) train-resnet
	test -e runs/cnn/resnet-distilled/best.pt || $(MAKE) train-resnet-distilled
	test -e runs/cnn/resnet-trivial/best.pt || $(MAKE) train-resnet-trivial
	$(RESNET) --augment flip-crop --teacher $(ENSEMBLE) --distill 0.7 --temperature 2 --epochs 50 --name resnet-ensemble
	$(PY) -m training.cnn_report

train-resnet-trivial: $(VENV)/.full ## ablation: the `resnet` recipe with TrivialAugment on top of flips and crops
	$(need_data)
	$(RESNET) --augment flip-crop-trivial --name resnet-trivial
	$(PY) -m training.cnn_report

train-resnet-trivial-long: $(VENV)/.full ## ablation of length: `resnet-trivial` over 100 epochs (about 100 min on 2 threads)
	$(need_data)
	$(RESNET) --augment flip-crop-trivial --epochs 100 --name resnet-trivial-long
	$(PY) -m training.cnn_report

train-resnet-long: $(VENV)/.full ## ablation of length: the `resnet` recipe over 60 epochs (about 100 min on 1 thread)
	$(need_data)
	$(RESNET) --augment flip-crop --epochs 60 --name resnet-long
	$(PY) -m training.cnn_report

train-resnet-mixup: $(VENV)/.full ## ablation of mixup: `resnet-long` with mixup (alpha 0.2) against its late overfitting (about 100 min on 1 thread)
	$(need_data)
	$(RESNET) --augment flip-crop --epochs 60 --mixup 0.2 --name resnet-mixup
	$(PY) -m training.cnn_report

train-resnet-narrow: $(VENV)/.full ## ablation of width: the `resnet` recipe at widths 48/96/192, 1,553,502 parameters (about 1 h on 1 thread)
	$(need_data)
	$(RESNET) --network resnet-narrow --augment flip-crop --name resnet-narrow
	$(PY) -m training.cnn_report

train-resnet-half: $(VENV)/.full ## ablation of width: the `resnet` recipe at widths 32/64/128 (about 30 min on 1 thread)
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --name resnet-half
	$(PY) -m training.cnn_report

train-resnet-half-cutout: $(VENV)/.full ## ablation of augmentation: `resnet-half` with cutout (one 16x16 hole per image) after flips and crops
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop-cutout --name resnet-half-cutout
	$(PY) -m training.cnn_report

train-resnet-half-cutmix: $(VENV)/.full ## ablation of batch mixing: `resnet-half` with CutMix (alpha 1, every batch) after flips and crops
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --cutmix 1.0 --name resnet-half-cutmix
	$(PY) -m training.cnn_report

train-resnet-half-mixup: $(VENV)/.full ## ablation of batch mixing: `resnet-half` with mixup (alpha 0.2, every batch), over the usual 45 epochs
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --mixup 0.2 --name resnet-half-mixup
	$(PY) -m training.cnn_report

train-resnet-narrow-mixup: $(VENV)/.full ## `resnet-narrow` (the served network) with mixup (alpha 0.2, every batch): 40 min on 2 threads
	$(need_data)
	$(RESNET) --network resnet-narrow --augment flip-crop --mixup 0.2 --name resnet-narrow-mixup
	$(PY) -m training.cnn_report

train-resnet-half-resized: $(VENV)/.full ## ablation of augmentation: `resnet-half` with random resized crops and colour jitter instead
	$(need_data)
	$(RESNET) --network resnet-half --augment resized-crop --name resnet-half-resized
	$(PY) -m training.cnn_report

train-resnet-half-nosmooth: $(VENV)/.full ## ablation of label smoothing: `resnet-half` trained on hard labels (0 instead of 0.1)
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --label-smoothing 0 --name resnet-half-nosmooth
	$(PY) -m training.cnn_report

train-resnet-half-trainval: $(VENV)/.full ## ablation of data: `resnet-half` fitted on train and val together, last epoch kept (only test measures it)
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --train-on-val --name resnet-half-trainval
	$(PY) -m training.cnn_report

# ablation of weight decay: `resnet-half` with another weight decay than 5e-4 (measured: wd1e-3, wd2e-4)
train-resnet-half-wd%: $(VENV)/.full
	$(need_data)
	$(RESNET) --network resnet-half --augment flip-crop --weight-decay $* --name $(subst train-,,$@)
	$(PY) -m training.cnn_report

train-resnet-half-deep: $(VENV)/.full ## ablation of depth: `resnet-half` with three blocks per stage, 1,079,574 parameters
	$(need_data)
	$(RESNET) --network resnet-half-deep --augment flip-crop --name resnet-half-deep
	$(PY) -m training.cnn_report

train-resnet-half-hires: $(VENV)/.full ## ablation of resolution: `resnet-half` with its first stage at 48x48, not 24x24 (about 75 min on 2 threads, 110 on 1)
	$(need_data)
	$(RESNET) --network resnet-half-hires --augment flip-crop --name resnet-half-hires
	$(PY) -m training.cnn_report

# `resnet-narrow`, `resnet-half` or `resnet-half-hires` from another seed (1, 2, ...): ensemble candidates (below)
train-resnet-narrow-seed% train-resnet-half-seed% train-resnet-half-hires-seed%: $(VENV)/.full
	$(need_data)
	$(RESNET) --network $(subst train-,,$(firstword $(subst -seed, ,$@))) --augment flip-crop --seed $* \
		--name $(subst train-,,$@)
	$(PY) -m training.cnn_report

# any of the 48x48-first-stage networks trained under bfloat16 autocast (on a Xeon with AMX: resnet-half-hires
# 55 min on 1 thread against 107 in fp32; without bfloat16 hardware it is emulated, many times slower, and
# train_cnn warns), also from seeds 1 to 4: train-<network>-bf16[-seed<N>]
BF16_RUNS := $(foreach net,resnet-half-hires resnet-narrow-hires resnet-hires,\
	train-$(net)-bf16 $(foreach seed,1 2 3 4,train-$(net)-bf16-seed$(seed)))
$(BF16_RUNS): $(VENV)/.full
	$(need_data)
	$(RESNET) --network $(firstword $(subst -bf16, ,$(@:train-%=%))) --augment flip-crop --bf16 \
		$(if $(findstring -seed,$@),--seed $(lastword $(subst -seed, ,$@))) --name $(@:train-%=%)
	$(PY) -m training.cnn_report

train-resnet-half-hires-bf16: ## ablation of precision: `resnet-half-hires` trained in bfloat16 autocast (55 min on 1 thread)
train-resnet-narrow-hires-bf16: ## `resnet-narrow` with its first stage at 48x48, in bfloat16 (89 min on 1 thread)
train-resnet-hires-bf16: ## `resnet` with its first stage at 48x48, in bfloat16 (about 65 min on 2 threads)

train-resnet-half-hires-sam: $(VENV)/.full ## ablation of the optimizer: `resnet-half-hires-bf16` with sharpness-aware minimisation (rho 0.05, two passes a step)
	$(need_data)
	$(RESNET) --network resnet-half-hires --augment flip-crop --bf16 --sam 0.05 --name resnet-half-hires-sam
	$(PY) -m training.cnn_report

CNN_CANDIDATES := resnet-narrow-seed1 resnet-half-seed1 resnet-half-seed2
HIRES_CANDIDATES := resnet-half-hires resnet-half-hires-seed1 resnet-half-hires-seed2 resnet-narrow-seed1
BF16_CANDIDATES := resnet-narrow-hires-bf16 resnet-half-hires-bf16 resnet-half-hires-bf16-seed1
SERVED_CANDIDATES := resnet-narrow resnet-half-deep resnet-half-nosmooth

# the subset of candidates ($(2)) best on validation within 3M parameters, exported as cnn-$(1).onnx if it beats
# cnn.onnx on validation; candidates with neither a checkpoint nor an export of exports/ are trained first
define ensemble_cnn
	$(need_data)
	for run in $$($(PY) -m training.ensemble_cnn --missing --candidates $(2)); do $(MAKE) train-$$run || exit 1; done
	$(PY) -m training.ensemble_cnn --data "$(DATA)" --threads $(THREADS) --name $(1) --candidates $(2)
endef

ensemble-cnn: $(VENV)/.full ## the subset of CNN_CANDIDATES (width and seeds) best on validation within 3M parameters, exported if it beats cnn.onnx
	$(call ensemble_cnn,ensemble,$(CNN_CANDIDATES))

ensemble-cnn-hires: $(VENV)/.full ## the same over HIRES_CANDIDATES: resnet-half-hires from three seeds, and resnet-narrow-seed1
	$(call ensemble_cnn,ensemble-hires,$(HIRES_CANDIDATES))

ensemble-cnn-bf16: $(VENV)/.full ## the same over BF16_CANDIDATES: the 48x48-first-stage networks trained in bfloat16
	$(call ensemble_cnn,ensemble-bf16,$(BF16_CANDIDATES))

ensemble-cnn-served: $(VENV)/.full ## the same over SERVED_CANDIDATES: the served resnet-narrow (from its export) and the depth and label-smoothing runs
	$(call ensemble_cnn,ensemble-served,$(SERVED_CANDIDATES))

train-transformer: $(VENV)/.full ## our speller: a transformer encoder-decoder, 15 epochs (resumable)
	$(PY) -m training.train_p2g --model transformer --lr 0.001 --batch-size 256 --epochs 15 --dropout 0.1 \
		--label-smoothing 0.1 --schedule warmup-cosine --threads $(THREADS) --resume
	$(PY) -m training.p2g_report

train-attention-large: $(VENV)/.full ## our speller: the attention LSTM at hidden 256, label smoothing, warm-up + cosine, 40 epochs (resumable)
	$(PY) -m training.train_p2g --model attention --name attention-large --hidden 256 --embedding 256 \
		--batch-size 128 --epochs 40 --label-smoothing 0.1 --schedule warmup-cosine --threads $(THREADS) --resume
	$(PY) -m training.p2g_report

train-attention-stress: $(VENV)/.full ## ablation of input: the reference attention speller reading stress digits (AE1 vs AE0)
	$(PY) -m training.train_p2g --model attention --name attention-stress --stress --threads $(THREADS) --resume
	$(PY) -m training.p2g_report

ATTENTION_DEEP := $(PY) -m training.train_p2g --model attention --hidden 256 --embedding 256 --encoder-layers 2 \
	--batch-size 128 --epochs 30 --label-smoothing 0.1 --schedule warmup-cosine --threads $(THREADS) --resume

train-attention-deep: $(VENV)/.full ## our speller: `attention-large` with a BiLSTM encoder of 2 layers, 30 epochs (resumable)
	$(ATTENTION_DEEP) --name attention-deep
	$(PY) -m training.p2g_report

train-attention-deep-seed1: $(VENV)/.full ## `attention-deep` again from another seed: a member for the ensemble (about 2 h on 1 thread)
	$(ATTENTION_DEEP) --name attention-deep-seed1 --seed 1
	$(PY) -m training.p2g_report

train-attention-deep-stress: $(VENV)/.full ## `attention-deep` reading stress digits, in bfloat16 (106 min on 1 thread beside other runs)
	$(ATTENTION_DEEP) --name attention-deep-stress --stress --bf16
	$(PY) -m training.p2g_report

train-attention-deep-stress-seed1: $(VENV)/.full ## `attention-deep-stress` again from another seed: a member for the stress ensemble
	$(ATTENTION_DEEP) --name attention-deep-stress-seed1 --stress --bf16 --seed 1
	$(PY) -m training.p2g_report

train-attention-large-stress: $(VENV)/.full ## `attention-large` reading stress digits, in bfloat16: a member for the stress ensemble
	$(PY) -m training.train_p2g --model attention --name attention-large-stress --hidden 256 --embedding 256 \
		--batch-size 128 --epochs 40 --label-smoothing 0.1 --schedule warmup-cosine --stress --bf16 \
		--threads $(THREADS) --resume
	$(PY) -m training.p2g_report

train-attention-distilled: $(VENV)/.full ## `attention-deep` taught by the exported attention-ensemble (word-level distillation), in bfloat16
	$(ATTENTION_DEEP) --name attention-distilled --teacher attention-ensemble --distill 0.5 --bf16
	$(PY) -m training.p2g_report

SPELLER_CANDIDATES := attention-deep attention-large attention-deep-seed1

ensemble-p2g: $(VENV)/.full ## our best speller: the subset of exported spellers best on validation, as one export
	$(PY) -m training.ensemble_p2g --name attention-ensemble --candidates $(SPELLER_CANDIDATES)
	$(PY) -m training.p2g_report

STRESS_CANDIDATES := attention-deep-stress attention-deep-stress-seed1 attention-large-stress

ensemble-p2g-stress: $(VENV)/.full ## the same over STRESS_CANDIDATES: spellers reading stress digits
	$(PY) -m training.ensemble_p2g --name attention-ensemble-stress --candidates $(STRESS_CANDIDATES)
	$(PY) -m training.p2g_report

compare-p2g: $(VENV)/.full ## every exported speller and both peers on the test split -> results/p2g/comparison.md
	test -e runs/peer/phonetisaurus/model.fst || $(PY) -m training.peer_phonetisaurus
	test -e runs/peer/phonetisaurus-stress/model.fst || $(PY) -m training.peer_phonetisaurus --stress true
	$(PY) -m training.p2g_compare --jobs 2

quantize-p2g: $(VENV)/.full ## an int8 copy of the ensemble (ONNX Runtime dynamic quantization), 1.6-2.5x faster on CPU
	$(PY) -m training.quantize_p2g attention-ensemble
	$(PY) -m training.p2g_report

quantize-p2g-single: $(VENV)/.full ## an int8 copy of the best single speller, attention-deep-stress-seed1: fast and small
	$(PY) -m training.quantize_p2g attention-deep-stress-seed1
	$(PY) -m training.p2g_report

pair-p2g: $(VENV)/.full ## a fast speller: the ensemble of attention-deep + attention-large, served as its int8 copy only
	$(PY) -m training.ensemble_p2g --name attention-pair --candidates attention-deep attention-large
	$(PY) -m training.quantize_p2g attention-pair --replace
	$(PY) -m training.p2g_report

pair-p2g-stress: $(VENV)/.full ## the same fast pair from the spellers reading stress: attention-deep-stress + attention-large-stress, int8
	$(PY) -m training.ensemble_p2g --name attention-pair-stress --candidates attention-deep-stress attention-large-stress
	$(PY) -m training.quantize_p2g attention-pair-stress --replace
	$(PY) -m training.p2g_report

beam-p2g: $(VENV)/.full ## beam widths for the n-best lists, on the validation split -> results/p2g/beam_width.md
	$(PY) -m training.p2g_compare --beam-widths attention-ensemble attention-deep

peer-p2g: $(VENV)/.full ## the peer speller (issue #11): Phonetisaurus trained and scored on the same split
	$(PY) -m training.peer_phonetisaurus

peer-p2g-stress: $(VENV)/.full ## the peer reading stress digits too (the same input as our spellers with --stress)
	$(PY) -m training.peer_phonetisaurus --stress true

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

GPU ?=
IMAGE ?= $(if $(GPU),scenespell-gpu,scenespell):latest

containerize: $(VENV)/.serving ## build the bento and its image $(IMAGE): docker, else podman; GPU=1: CUDA variant
	PATH="$(abspath $(VENV))/bin:$$PATH" deploy/container.sh build $(if $(GPU),deploy/bentofile-gpu.yaml,bentofile.yaml) $(IMAGE)

container-smoke: $(VENV)/.serving ## run $(IMAGE) on 127.0.0.1: /readyz, /classify, /spell, non-root; then remove it
	$(PY) -m deploy.smoke --image $(IMAGE) --data "$(DATA)"

lock: $(VENV)/.full ## rewrite requirements/constraints.txt from the installed environment
	{ sed -n '1,2p' requirements/constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^onnxruntime-gpu=='; } > requirements/constraints.tmp
	mv requirements/constraints.tmp requirements/constraints.txt

clean: ## remove caches and built bentos (keeps .venv, runs/ and exports/)
	rm -rf .pytest_cache .ruff_cache build
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
