# One command each: `make demo` and `make test` create or reuse .venv from requirements-cpu.txt,
# install dualml into it (editable) and run. Nothing else needs installing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dualml-installed

.PHONY: venv test demo parity bench lint clean

$(STAMP): requirements-cpu.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23"
	$(BIN)/python -m pip install -q -r requirements-cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -q tests parity_tests

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
