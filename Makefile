# The two commands: `make demo` and `make test`. Both create .venv if missing and install
# slimkit with its dependencies (torch pinned to the CPU build 2.13.0).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DATA := $(abspath ../shared/data)
export SLIMKIT_DATA ?= $(if $(wildcard $(DATA)/README.md),$(DATA),)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-int8-avx2 install bench lint results clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/slimkit demo

test: $(STAMP)
	@if [ -z "$$SLIMKIT_DATA" ]; then echo "note: ../shared/data not found; tests that need real data will fail with a message"; fi
	@$(BIN)/python -c "from slimkit.core.cpu import int8_isa; print(int8_isa().line())"
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# The int8 tests again with the int8 kernels forced below VNNI (what AVX2-only CPUs such as AMD
# Zen 2 run): fbgemm (torch eager int8) and oneDNN (PT2E) obey these variables, and slimkit's ISA
# detector reads them, so the 7-bit-weight settings are exercised and checked for exactness on any
# x86-64 CPU. ONNX Runtime's MLAS cannot be forced (docs/quantization.md).
INT8_AVX2_ENV := FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
test-int8-avx2: $(STAMP)
	@$(INT8_AVX2_ENV) $(BIN)/python -c "from slimkit.core.cpu import int8_isa; print(int8_isa().line())"
	$(INT8_AVX2_ENV) $(BIN)/python -m pytest -q -m int8 --durations=5 $(PYTEST_ARGS)

# ruff, then the import graph between slimkit's parts (fails on a cycle; --modules lists every edge)
lint: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks tools
	$(BIN)/python tools/import_graph.py

# docs/results.md from benchmarks/results/*.json (a test fails when it is stale)
results: $(STAMP)
	$(BIN)/python benchmarks/make_results.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
