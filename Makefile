# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use. TORCH picks the torch build to install first:
# the default is a CPU build (torch==2.13.0); pass e.g. TORCH=torch for your own.
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
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/m3rcr demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check m3rcr_xr tests benchmarks scripts
	$(BIN)/ruff format --check m3rcr_xr tests benchmarks scripts

clean:
	rm -rf $(VENV) $(DEMO_OUT)
