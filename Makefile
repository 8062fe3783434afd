# Two commands do all set-up on a fresh machine (see README):
#   make demo   install, then run the quickstart study on built-in real data and write its report (offline)
#   make test   install, then run the test suite (offline)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WS     ?= demo-workspace

.PHONY: install demo test test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# spm-runtime ships SPM's templates inside a zip; its own dependencies are not needed (--no-deps).
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	$(BIN)/pip install --quiet --no-deps "spm-runtime>=25"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/transfuse study run examples/quickstart.yaml --workspace $(WS) --workers 2 --report
	$(BIN)/transfuse runs list --workspace $(WS) --study quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf $(VENV) $(WS) .pytest_cache
