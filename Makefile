# Two commands do all the set-up: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# A torch release known to work; on these machines pip takes it from a local CPU wheel, on a
# machine with an NVIDIA driver the same pin gives the CUDA build.
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages beyond Python: OpenCV's headers for the C++ example (examples/cpp), and
# GStreamer with its Python plugin loader for the reblurdeblur element (reblur_deploy/gst; the
# libav and ugly plugins decode and encode H.264). Run as root (CI does, from .ci/run); a user
# runs `sudo make system-deps`.
SYSTEM_PACKAGES := libopencv-dev cmake pkg-config gstreamer1.0-tools gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gstreamer1.0-python3-plugin-loader python3-gst-1.0 gir1.2-gst-plugins-base-1.0

.PHONY: demo test test-fast lint format clean cpp system-deps

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx,plot,ray]"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m reblur_deploy.demo --clip examples/samples/gopro_clip_480x270.mp4 --out demo_output

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The edit loop: everything but the tests marked slow (> about 5 s each); CI runs `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -x -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

system-deps:
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then echo "system packages: present"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; fi

# The C++ example against this venv's LibTorch and Debian's OpenCV: build/cpp/reblur_deblur
cpp: $(STAMP)
	cmake -S examples/cpp -B build/cpp \
		-DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cpp -j 2

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache *.egg-info
