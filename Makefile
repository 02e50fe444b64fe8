# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.headstart-installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "setting up .venv: a private Python environment with headstart and its dependencies (torch, timm, OpenVINO…)"
	@echo "the first time takes a few minutes (about 4 on 2 cores); afterwards run .venv/bin/headstart, or source .venv/bin/activate"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,serve,tf]'
	$(BIN)/python -m pip install --quiet --no-deps 'torchattacks==3.5.1'  # see pyproject.toml: its pins break hub
	$(BIN)/python -m pip install --quiet --no-deps 'onnx2tf==1.28.8' 'tf-keras==2.21.0'  # see pyproject.toml's tf extra
	touch $(STAMP)
	@echo "ready: .venv/bin/headstart --help (or: source .venv/bin/activate, then headstart --help)"

demo: $(STAMP)
	$(BIN)/headstart demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check --quiet . || { echo "ruff format: run \`$(BIN)/ruff format .\` and commit" >&2; exit 1; }
	$(BIN)/ruff check --quiet .

clean:
	rm -rf $(VENV) headstart-demo
