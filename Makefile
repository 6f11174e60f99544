# make demo / make test create .venv on first use and install everything into it.
# TORCH_SPEC pins torch 2.13.0 when no CUDA GPU is present (override: make TORCH_SPEC=torch); which
# build the pin installs is pip's choice (README: a CPU build from PyTorch's index into .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
DEPS := triton nlopt numpy pybind11 pytest pytest-benchmark hypothesis safetensors tqdm matplotlib scipy pandas optuna setuptools wheel
STAMP := $(VENV)/.installed

.PHONY: demo test bench gpu-check clean

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(DEPS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m retrain demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m pytest -q tests/benchmarks --benchmark-enable --benchmark-only

# On a CUDA machine with torch + triton already installed (no venv, no network): build in place, test, time;
# results in $(OUT) (default runs/gpu_check), see docs/benchmarks.md "GPU (Triton)".
gpu-check:
	bash tests/benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info retrain/_C*.so
