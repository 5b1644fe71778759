# The two commands of the README. Each sets itself up: a virtual environment, editable
# installs of every package, the dev tools. Override TORCH for another torch build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEV ?= 'pytest>=8' 'hypothesis>=6' 'ruff>=0.6' 'tensorboard>=2.14' 'transformers>=4.45'
TRAIN ?= --method mic --plugin dispersion
PACKAGES := packages/uda-core packages/uda-data packages/uda-methods packages/uda-dispersion apps/cli
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test lint clean

setup: $(STAMP)

$(STAMP): $(foreach p,$(PACKAGES),$(p)/pyproject.toml) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(foreach p,$(PACKAGES),-e $(p)) $(DEV)
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/uda train $(TRAIN) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) work_dirs
