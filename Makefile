# slac-dist: `make train TASK=hopper` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# Empty TASK means the preset's own task (paper: cheetah_run; cpu: cartpole_swingup).
TASK   ?=
SEEDS  ?= 1
PARALLEL ?= auto
TASKS  ?=
PRESET ?= paper
ARGS   ?=
# Test tiers: pytest -m expressions, e.g. `make test MARK="not e2e"`.
MARK   ?=
# Actor processes (empty: the preset's).
ACTORS ?=
# make eval / make export: a run directory, its checkpoint (empty: the newest), episodes, file format.
RUN    ?=
CKPT   ?=
EPISODES ?= 10
# make eval: the evaluation's base seed (empty: the evaluation's default).
SEED   ?=
FORMAT ?= torchscript
# A Ray cluster to run on: the YAML `make cluster-up` started (remembered in .cluster), or RAY_ADDRESS=http://host:8265.
# With either, `make train` submits the driver as a Ray job; `CLUSTER=` trains on this machine again.
# CLUSTER_FILE: where that is remembered (tests/test_cluster_up.py keeps its own, beside other tests' `make train`).
CLUSTER_FILE ?= .cluster
CLUSTER ?= $(shell cat $(CLUSTER_FILE) 2>/dev/null)
JOB    ?=
ON_CLUSTER := $(if $(or $(CLUSTER),$(filter http://% https://%,$(RAY_ADDRESS))),1,)

# The torch build for this machine (CUDA for the newest CUDA its driver supports, else CPU) is chosen by
# scripts/torch_wheel.sh, whose header gives the rules; `make setup HAS_GPU=0` installs the CPU build anyway.
# TORCH_ARGS (pip's arguments: torch==<pin> and where from) runs it once, and only when a recipe needs it, so
# that its error (a driver too old, no CUDA version) stops `make setup` but not the targets of a finished setup.
# (sysdeps: rsync is `ray up`'s file copy.)
TORCH_WHEEL := bash scripts/torch_wheel.sh
HAS_GPU := $(shell HAS_GPU= $(TORCH_WHEEL) --has-gpu)
TORCH_ARGS = $(eval TORCH_ARGS := $(shell HAS_GPU=$(HAS_GPU) $(TORCH_WHEEL) 2>&1))$(if \
  $(filter 0,$(.SHELLSTATUS)),$(TORCH_ARGS),$(error $(TORCH_ARGS)))

.PHONY: setup sysdeps test train tasks reproduce eval export bench lint clean cluster-up cluster-down logs stop status

setup: $(STAMP)

# ldconfig lives in /sbin, off a non-root Debian user's PATH: without it every GL library would read as missing.
sysdeps:
	@missing=""; PATH="$$PATH:/sbin:/usr/sbin"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	ldconfig -p | grep -q libOSMesa || missing="$$missing libosmesa6"; \
	ldconfig -p | grep -q 'libEGL.so.1' || missing="$$missing libegl1"; \
	ldconfig -p | grep -q 'libGL.so.1' || missing="$$missing libgl1"; \
	if [ -n "$$missing" ]; then \
	  echo "make setup: installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "make setup: slac-dist needs Python 3.10" \
	  "or newer; python3 is $$(python3 --version 2>&1). Put a newer python3 first on PATH (pyenv, deadsnakes)." >&2; exit 2; }
	test -x $(PIP) || python3 -m venv --clear $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_ARGS)
	$(PIP) install -q -e ".[dev]"
	@if [ "$(HAS_GPU)" = 0 ] && $(PIP) list 2>/dev/null | grep -qi '^nvidia-'; then \
	  echo "make setup: CUDA wheels were installed on a machine without a GPU" >&2; exit 1; fi
	@if [ "$(HAS_GPU)" = 1 ] && ! $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
	  echo "make setup: this machine has an NVIDIA GPU but the installed torch cannot use it ($$($(PY) -c \
	    'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')); the learner would run on CPU." \
	       "Fix: $(PIP) install $(TORCH_ARGS), and check the driver with nvidia-smi" >&2; exit 1; fi
	touch $(STAMP)

# Every tier (no MARK): scripts/test_all.py runs them on two lanes, the learning tier beside the others.
test: setup
	$(if $(MARK),$(PY) -m pytest -q -m "$(MARK)",PY=$(PY) $(PY) scripts/test_all.py)

TASK_ARG = $(if $(TASK),--run.task $(TASK),)

ACTORS_ARG = $(if $(ACTORS),--actors.num $(ACTORS),)

train: setup
ifeq ($(ON_CLUSTER),1)
	CLUSTER="$(CLUSTER)" $(PY) -m deploy.jobs submit --preset "$(PRESET)" --task "$(TASK)" --actors "$(ACTORS)" -- $(ARGS)
else
	$(PY) -m deploy.train $(PRESET) $(TASK_ARG) $(ACTORS_ARG) $(ARGS)
endif

# The registered task names with their settings, and the task strings beyond them (dmc:, gym:, module:callable).
tasks: setup
	$(PY) -m deploy.tasks

# A cloud cluster (AWS by default; CLUSTER=deploy/cluster-gcp.yaml or deploy/cluster-local.yaml for the others).
# Ray's token auth: every node gets this machine's ~/.ray/auth_token (the YAMLs ship it), so only holders of
# the token can submit jobs or join. Ray's autoscaler v1: the one tests/test_autoscaling.py runs with the YAMLs' node
# types, and the one that starts an on-premise YAML's workers (`ray up`'s default since Ray 2.50, v2, starts only the
# head of deploy/cluster-local.yaml: Ray issues 46204, 59905; tests/test_cluster_up.py).
cluster-up: setup
	@yaml="$(or $(CLUSTER),deploy/cluster.yaml)"; placeholder=$$(grep -oE -m1 \
	  'ami-EDIT[^ ]*|project_id: my-gcp-project|EDIT-[a-z0-9-]+' "$$yaml" || true); \
	if [ -n "$$placeholder" ]; then \
	  echo "make cluster-up: $$yaml still has a placeholder ($$placeholder): edit the lines marked EDIT (AMI ids:" \
	       "the commands in cluster.yaml's header print your region's; a GCP project id; your machines' addresses)." >&2; \
	  exit 2; fi
	$(VENV)/bin/ray get-auth-token --generate >/dev/null
	RAY_UP_enable_autoscaler_v2=0 $(VENV)/bin/ray up -y $(or $(CLUSTER),deploy/cluster.yaml)
	echo "$(or $(CLUSTER),deploy/cluster.yaml)" > $(CLUSTER_FILE)
	@CLUSTER="$(or $(CLUSTER),deploy/cluster.yaml)" $(PY) -m deploy.jobs status --nodes || true
	@echo "cluster up: \`make train TASK=hopper\` now runs there (make status, make cluster-down to tear it down)"

# On machines you already have, Ray is stopped on the workers first (`ray down` stops only the head's there).
cluster-down: setup
	$(PY) -m deploy.cluster_down $(or $(CLUSTER),deploy/cluster.yaml)
	$(VENV)/bin/ray down -y $(or $(CLUSTER),deploy/cluster.yaml)
	rm -f $(CLUSTER_FILE)

# The last job `make train` submitted (or JOB=<id>): follow its logs, or stop it (it checkpoints first).
logs: setup
	CLUSTER="$(CLUSTER)" $(PY) -m deploy.jobs logs $(JOB)

stop: setup
	CLUSTER="$(CLUSTER)" $(PY) -m deploy.jobs stop $(JOB)

# The cluster's nodes by role, the last job, its progress line and its W&B run.
status: setup
	CLUSTER="$(CLUSTER)" $(PY) -m deploy.jobs status $(JOB)

# SEEDS runs of the paper's evaluation protocol -> results/<task>/<preset>/{returns.csv,returns.png}, PARALLEL
# of them at once (auto: as many as the cores and GPU memory allow); TASKS=a,b,c for several tasks, and
# results/<preset>/table.md beside the published figures.
reproduce: setup
	$(PY) -m deploy.reproduce $(PRESET) $(TASK_ARG) $(if $(TASKS),--tasks $(TASKS),) --seeds $(SEEDS) \
	  --parallel $(PARALLEL) $(ARGS)

# A trained run: play EPISODES episodes per policy (stochastic, deterministic) -> <run>/eval/<ckpt>.json + GIFs.
eval: setup
	@test -n "$(RUN)" || { echo "make eval: RUN=<run directory> is required (ls runs/)" >&2; exit 2; }
	$(PY) -m deploy.evaluation "$(RUN)" --episodes $(EPISODES) $(if $(CKPT),--ckpt "$(CKPT)",) \
	  $(if $(SEED),--seed $(SEED),)

# The policy as one TorchScript (.pt) or ONNX file -> <run>/export/; examples/play_exported.py runs it.
export: setup
	@test -n "$(RUN)" || { echo "make export: RUN=<run directory> is required (ls runs/)" >&2; exit 2; }
	$(PY) -m deploy.export "$(RUN)" --format $(FORMAT) $(if $(CKPT),--ckpt "$(CKPT)",)

# TensorBoard on RUN: one run directory, or a folder of runs (runs/ by default; a `make reproduce` folder such as
# runs/reproduce/<task>/<preset> shows one TensorBoard run per seed, named seed<k>/tensorboard). ARGS: tensorboard's
# own options, e.g. ARGS="--port 6007 --bind_all".
.PHONY: tensorboard
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir "$(or $(RUN),runs)" $(ARGS)

BENCH_TAG = $(shell hostname)-$(shell date +%Y-%m-%d)
bench: setup
	$(PY) bench/learner.py --preset debug --updates 20 --profile --out bench/results/$(BENCH_TAG)-learner-debug.json
	$(PY) bench/learner.py --preset paper --updates 3 --precisions fp32,bf16 --profile \
	  --out bench/results/$(BENCH_TAG)-learner-paper.json
	$(PY) bench/replay.py --out bench/results/$(BENCH_TAG)-replay.json
	$(PY) bench/envs.py
	$(PY) bench/actor.py
	$(PY) bench/system.py --out bench/results/$(BENCH_TAG)-system.json

lint: setup
	$(VENV)/bin/ruff check common learner actors replay_service deploy tests bench scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
