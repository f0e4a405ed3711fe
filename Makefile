# The README contract: `make figures` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install figures figures-all test test-fast lint paper clean

install: $(STAMP)

# Keep an existing torch (e.g. a CUDA build on a cluster): the venv then sees system packages.
$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "pvq: using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

figures: $(STAMP)
	$(BIN)/pvq figures

# The thesis on every embedded default in turn (the default model first), then the cross-model section.
figures-all: $(STAMP)
	$(BIN)/pvq figures --models all

# No -x: a failed download in a registry test must not hide the other results (tests/conftest.py runs the
# tests marked slow, which need the default models, last).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check theory measure figures pvq tests benchmarks

paper: $(STAMP)
	$(BIN)/pvq paper

clean:
	rm -rf $(VENV) paper/build
