# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use. TORCH is what pip installs first, as pip arguments:
# the default torch==2.13.0 is a CPU build only where a local wheel of it is found (pip's
# find-links, as on our CI); elsewhere pip fetches the CUDA build from PyPI. CPU only:
#   make venv TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= dev,hpc,cloud
DEMO_OUT ?= demo-output
BIN := $(VENV)/bin
STAMP := $(VENV)/.m3rcr-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/m3rcr demo --out $(DEMO_OUT)

# the tests and the package's docstring examples (pyproject.toml: --doctest-modules)
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check m3rcr_xr tests benchmarks scripts
	$(BIN)/ruff format --check m3rcr_xr tests benchmarks scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(DEMO_OUT)
