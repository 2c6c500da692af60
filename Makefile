# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# A torch release known to work; on these machines pip takes it from a local CPU wheel, on a
# machine with an NVIDIA driver the same pin gives the CUDA build.
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx,plot]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m reblur_deploy.demo --clip examples/samples/gopro_clip_480x270.mp4 --out demo_output

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache *.egg-info
