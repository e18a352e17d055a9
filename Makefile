# Two entry points for a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# olah (a self-hosted HF mirror the tests run as a server) pins versions that clash with ours
# (psutil), so it has a virtualenv of its own; tests/olahserver.py creates it the same way.
OLAH_VENV := .venv-olah
OLAH_VERSION := 0.5.4

.PHONY: run test install bench clean olah

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on local disk here; pinning it first keeps pip
	# from resolving a multi-GB CUDA build for the `torch>=2.4` requirement.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(OLAH_VENV)/bin/olah-cli:
	$(PY) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/pip install -q olah==$(OLAH_VERSION)

olah: $(OLAH_VENV)/bin/olah-cli

run: $(STAMP)
	$(BIN)/subnetscope serve

test: $(STAMP) olah
	bash .ci/system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) $(OLAH_VENV) test-artifacts
