# Quick start: `make repro` runs the pipeline on the embedded default; `make test` runs the tests.
# Both create .venv and install on first use, and are safe to run again.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Nothing in this project may download weights or data at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: repro verify-repro test install bench clean-venv prefect-server prefect-deploy worker-cpu worker-gpu flow

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

repro: $(STAMP)
	@if [ ! -d .dvc ]; then \
	  if git rev-parse --git-dir >/dev/null 2>&1; then dvc init --quiet; else dvc init --no-scm --quiet; fi; \
	fi
	dvc repro

# After `make repro` on a clean clone: every output's hash must equal the committed dvc.lock's.
verify-repro: $(STAMP)
	$(BIN)/skinflow verify-lock --against HEAD

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

clean-venv:
	rm -rf $(VENV)

# Prefect: a local server on 127.0.0.1, the deployments of prefect.yaml, and one worker per pool.
prefect-server: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

prefect-deploy: $(STAMP)
	$(BIN)/prefect work-pool create cpu --type process || true
	$(BIN)/prefect work-pool create gpu --type process || true
	$(BIN)/prefect work-pool create orchestrator --type process || true
	SKINFLOW_CHECKOUT=$(CURDIR) $(BIN)/prefect deploy --all

worker-cpu: $(STAMP)
	$(BIN)/prefect worker start --pool cpu

worker-gpu: $(STAMP)
	$(BIN)/prefect worker start --pool gpu

flow: $(STAMP)
	$(BIN)/python -m flows.pipeline
