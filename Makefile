# Two commands on a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test bench bench-extract bench-threat bench-verdict clean

install: $(STAMP)

# constraints.txt is the lock: every package pinned, torch to the CPU wheel kept on these machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks write benchmarks/results/*.json and *.md (machine described inside); never run in CI.
bench: bench-extract bench-threat bench-verdict

# Needs the demo's world and base model (dvc repro world base).
bench-threat: $(STAMP)
	$(BIN)/dvc repro world base
	$(BIN)/python benchmarks/threat.py --world data/world --base models/base

bench-extract: $(STAMP)
	$(BIN)/python benchmarks/extract.py

# False alarms: scans clean worlds of other seeds with the demo's base model.
bench-verdict: $(STAMP)
	$(BIN)/dvc repro base
	$(BIN)/python benchmarks/verdict.py --base models/base --seeds 1,2,3

clean:
	rm -rf data/world models metrics reports .cache
