# The two commands of the README. Each creates its own virtual environment in .venv.
#   make demo   -- the main job on the embedded phantom cohort (CPU is fine, no download)
#   make test   -- the test suite
PYTHON ?= python3
VENV   ?= .venv
# The CPU wheel of torch is pinned here only, in the same pip call as everything else, so that
# pip never resolves a multi-GB CUDA build on a machine without a GPU. The library itself asks for
# a range (see pyproject.toml).
TORCH_PIN ?= torch==2.13.0
RUN_DIR ?= runs/demo

.PHONY: setup demo test clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_PIN)" -e ".[demo,notebooks,test,browser]"
	touch $@

demo: setup
	$(VENV)/bin/python -m mosmoskit demo --out $(RUN_DIR)

test: setup
	$(VENV)/bin/python -m pytest

clean-venv:
	rm -rf $(VENV)
