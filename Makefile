# kinject: `make demo` and `make test` each set up .venv first (torch CPU build before the rest).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: install demo test bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kinject demo

# The report's test renders it in headless Chromium (Debian's `chromium` package).
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium (apt-get) for the report's rendering test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		>/dev/null || echo "could not install chromium: run 'apt-get install chromium' as root"; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/budgets.py

clean:
	rm -rf $(VENV) runs .pytest_cache
