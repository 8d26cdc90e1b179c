# Nemotron 3 Nano post-training recipe. Every target uses .venv and creates it first if needed.
#   make setup                  create .venv and install (a second run does nothing)
#   make test                   run the CPU test suite (GPU-only tests are skipped without a GPU)
#   make tokenizer              regenerate the embedded tokenizer (byte-identical to the committed one)
#   make sft | rlvr | genrm | rlhf    run one stage of runs/$(EXP)/ (each after the one before)
#   make lineage EXP=<name>     show the lineage chain of runs/<name>; make verify EXP=<name> re-hashes it
# Common variables: EXP=<name> (default demo), ARGS="key=value ...", CONFIG=<yaml>.
# A value with spaces goes in quotes inside ARGS: ARGS='grpo.env_ratios="{math: 0.5, code: 0.5}"'.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
EXP ?= demo
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test tokenizer lineage verify clean
setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.lock scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

tokenizer: $(STAMP)
	$(PY) -m chat_template.build_tokenizer

lineage: $(STAMP)
	$(PY) -m stages.lineage show runs/$(EXP)

verify: $(STAMP)
	$(PY) -m stages.lineage verify runs/$(EXP)

clean:
	rm -rf runs/$(EXP)

# NPROC=N: N data-parallel processes (torchrun, FSDP2; gloo on CPU, NCCL on GPU).
NPROC ?= 1
LAUNCH = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC))

.PHONY: sft
sft: $(STAMP)
	$(LAUNCH) -m stages.sft --config $(or $(CONFIG),configs/sft.yaml) exp=$(EXP) $(ARGS)

.PHONY: rlvr
rlvr: $(STAMP)
	$(PY) -m stages.rlvr --config $(or $(CONFIG),configs/rlvr.yaml) exp=$(EXP) $(ARGS)

.PHONY: genrm
genrm: $(STAMP)
	$(PY) -m stages.genrm --config $(or $(CONFIG),configs/genrm.yaml) exp=$(EXP) $(ARGS)

.PHONY: rlhf
rlhf: $(STAMP)
	$(PY) -m stages.rlhf --config $(or $(CONFIG),configs/rlhf.yaml) exp=$(EXP) $(ARGS)

.PHONY: eval
eval: $(STAMP)
	$(PY) -m stages.eval --config $(or $(CONFIG),configs/eval.yaml) exp=$(EXP) $(ARGS)

# The whole recipe on the embedded default (set-up included): SFT -> RLVR -> GenRM -> RLHF -> eval -> summary.
.PHONY: pipeline
pipeline: $(STAMP)
	$(PY) -m stages.pipeline exp=$(EXP) $(ARGS)

.PHONY: report
report: $(STAMP)
	$(PY) -m stages.report runs/$(EXP)

# Ray cluster: RAY_ADDRESS=http://<head>:8265 (the dashboard). STAGE=sft|rlvr|genrm|rlhf|eval.
PYTHON_ON_CLUSTER ?= $(abspath $(PY))
.PHONY: submit submit-status submit-logs
submit: $(STAMP)
	$(PY) -m stages.submit $(STAGE) exp=$(EXP) $(ARGS) --python $(PYTHON_ON_CLUSTER)
submit-status: $(STAMP)
	$(PY) -m stages.submit --status $(JOB)
submit-logs: $(STAMP)
	$(PY) -m stages.submit --logs $(JOB)

# Benchmarks against peers (installs the peers first: the `bench` extra).
# BENCH_ARGS: the script's own flags (see `python -m bench.<name> --help`).
BENCH_ARGS ?=
.PHONY: bench-deps bench-packing bench-sft bench-grpo bench-rollout
bench-deps: $(STAMP)
	$(PY) -m pip install -q -c requirements/cpu.lock -e ".[bench]"
bench-packing: bench-deps
	$(PY) -m bench.packing $(BENCH_ARGS)
bench-sft: bench-deps
	HF_HUB_OFFLINE=1 $(PY) -m bench.sft $(BENCH_ARGS)
bench-grpo: bench-deps
	HF_HUB_OFFLINE=1 $(PY) -m bench.grpo $(BENCH_ARGS)
bench-rollout: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench.rollout $(BENCH_ARGS)
