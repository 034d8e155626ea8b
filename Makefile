# One command each: `make demo` and `make test` create or reuse .venv from requirements-cpu.txt,
# install dualml into it (editable) and run. Nothing else needs installing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dualml-installed

# The frameworks held to AVX2 kernels (torch's ATen and oneDNN switches). On an AVX2-only CPU this is the
# default; on an AVX512 one it is the other kernel family, so both legs prove nothing in the parity suite
# depends on which kernels the CPU picks. Paddle 2.6.2's results changed under no switch tried (MKL_CBWR,
# MKL_ENABLE_INSTRUCTIONS, FLAGS_use_mkldnn, OPENBLAS_CORETYPE: matmul and conv2d bit-identical); adding
# MKL_CBWR/MKL_ENABLE_INSTRUCTIONS=AVX2 here ended the leg with SIGILL on an AMD EPYC, so they are not set.
AVX2   := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2

.PHONY: venv test demo parity parity-avx2 bench lint clean

$(STAMP): requirements-cpu.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23"
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# ruff for style; lint-imports for the architecture (contracts in pyproject.toml: layers, no framework
# import from dualml, no cycles)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/python -m pytest -q tests parity_tests
	$(MAKE) --no-print-directory parity-avx2

parity-avx2: venv
	$(AVX2) $(BIN)/python -m pytest -q parity_tests

demo: venv
	$(BIN)/dualml demo model=cnn
	$(BIN)/dualml parity

parity: venv
	$(BIN)/dualml parity

bench: venv
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_onnx.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_compress.py
	$(BIN)/dualml bench model=cnn
	$(BIN)/dualml decide model=cnn

clean:
	rm -rf $(VENV) reports *.egg-info
