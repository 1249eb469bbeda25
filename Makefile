# Two commands: `make demo` and `make test`. Both set up everything they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The sidecar's hot path, compiled with mypyc by the editable install (setup.py), in place
# next to its sources: reinstalled (without its dependencies) when they or what they import
# change (constants may be compiled in), so the tests and the demo never run compiled code
# older than its source. INFERWATCH_COMPILE=0 runs pure Python (compiled modules removed).
COMPILED := $(VENV)/.compiled
COMPILED_FROM := $(wildcard inferwatch/*.py inferwatch/sidecar/*.py)

.PHONY: demo test lint typecheck pytest tools bench generate clean

$(STAMP): pyproject.toml setup.py build_backend.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The server extra needs torch: keep a torch that is already there (a user's CUDA build);
	@# otherwise take the pinned CPU wheel rather than a multi-GB CUDA download.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	@# The dependencies; the compiled hot path is $(COMPILED)'s (one compile, not two).
	INFERWATCH_COMPILE=0 $(BIN)/python -m pip install --quiet -e '.[dev,server,render]'
	@touch $(STAMP)

$(COMPILED): $(STAMP) $(COMPILED_FROM)
	rm -f inferwatch/sidecar/*.so inferwatch_hotpath__mypyc.*
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(COMPILED)

# Prometheus' promtool and Alertmanager's amtool, from Debian's packages when missing.
tools:
	@if command -v promtool >/dev/null && command -v amtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's prometheus and prometheus-alertmanager (for promtool and amtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	else \
	  echo "promtool and amtool are needed: install Debian's 'prometheus' and"; \
	  echo "'prometheus-alertmanager' packages (as root), or put both on PATH."; exit 1; \
	fi

demo: $(COMPILED) tools
	$(BIN)/inferwatch demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy inferwatch

pytest: $(COMPILED) tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(COMPILED) tools
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build inferwatch/sidecar/*.so inferwatch_hotpath__mypyc.*
