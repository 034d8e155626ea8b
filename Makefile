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

# Lane 3 (issue #15): the current framework line, beside the pinned lane 2.6 above. `make test-lane3` creates or
# reuses .venv3 from requirements-lane3.txt (paddlepaddle 3.3, paddle2onnx 2.1, no PaddleSlim), installs dualml
# into it (editable, --no-deps: the requirements file is the whole stack) and runs what differs between the
# lanes: the parity suite (layers, ops, zoo, custom layer, pruning, jit.save programs, training curves, ONNX
# parity) and the export and compression tests. Features lane 3 lacks are refused in one line and their
# tests assert the refusal (docs/architecture.md, "Lanes").
VENV3  := .venv3
BIN3   := $(VENV3)/bin
STAMP3 := $(VENV3)/.dualml-installed
LANE3_TESTS := parity_tests tests/test_float64.py tests/test_onnx_export.py tests/test_compress.py tests/test_prune.py \
               tests/test_quantization_passes.py tests/test_quantize.py tests/test_paddle_only.py \
               tests/test_ensemble.py tests/test_transfer.py

.PHONY: venv test demo parity parity-avx2 bench lint clean venv3 test-lane3

$(STAMP): requirements-cpu.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23"
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(STAMP3): requirements-lane3.txt setup.py
	test -x $(BIN3)/python || $(PYTHON) -m venv $(VENV3)
	$(BIN3)/python -m pip install -q --upgrade "pip>=23"
	$(BIN3)/python -m pip install -q -r requirements-lane3.txt
	$(BIN3)/python -m pip install -q --no-deps -e .
	touch $(STAMP3)

venv3: $(STAMP3)

test-lane3: venv3
	$(BIN3)/python -m pytest -q $(LANE3_TESTS)

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
	rm -rf $(VENV) $(VENV3) reports *.egg-info
