# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on disk here; pinning it first keeps pip from pulling a CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= outputs
DEMO_DATA ?= data/demo

.PHONY: install install-dev lint docs demo demo-data adult adult-data test test-fast budget mlflow-ui bench gpu-check mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DEMO_DATA)/.done: $(VENV)/.installed
	$(BIN)/lookalike-demo-data --output-dir $(DEMO_DATA)
	touch $@

demo-data: $(DEMO_DATA)/.done

ADULT_DATA ?= data/adult_lookalike
$(ADULT_DATA)/.done: $(VENV)/.installed src/lookalike/data/uci_adult.parquet
	$(BIN)/lookalike-demo-data --dataset adult --output-dir $(ADULT_DATA)
	touch $@

adult-data: $(ADULT_DATA)/.done

# The data owners' side: a budget and rules for each data set (lookalike-budget create). Both
# data sets are synthetic or public, so their owners allow exact (trusted) metrics and
# non-private baselines; a new budget allows neither.
LEDGER := $(OUT)/privacy_ledger.sqlite
OWNER_ALLOWS := --if-missing --allow-trusted-evaluation --allow-non-private

# Real data: UCI Adult, seed = income >50K (half held out), DP at epsilon 1.
adult: $(ADULT_DATA)/.done
	$(BIN)/lookalike-budget --ledger $(LEDGER) create --publisher $(ADULT_DATA)/publisher.parquet --epsilon 100 $(OWNER_ALLOWS)
	$(BIN)/lookalike-train experiment=adult paths.output_dir=$(OUT)

demo: $(DEMO_DATA)/.done
	$(BIN)/lookalike-budget --ledger $(LEDGER) create --publisher $(DEMO_DATA)/publisher --epsilon 5 $(OWNER_ALLOWS)
	$(BIN)/lookalike-train experiment=demo paths.output_dir=$(OUT)
	# The report is released with DP (trusted_evaluation=false), its epsilon charged to the ledger.
	$(BIN)/lookalike-export experiment=demo trusted_evaluation=false export.model=latest export.overwrite=true paths.output_dir=$(OUT)
	@echo
	@echo "Results:  $(OUT)/  (runs/ holds checkpoints and logs, privacy_ledger.sqlite the budget)"
	@echo "Segments: $(OUT)/segments/audience=<name>/size=<bin>/  report: $(OUT)/segments/report.json, report.png"
	@echo "Budget:   $(BIN)/lookalike-budget --ledger $(LEDGER)"
	@echo "MLflow:   $(BIN)/mlflow ui --backend-store-uri sqlite:///$(OUT)/mlflow.db  (then open http://127.0.0.1:5000)"

budget: $(VENV)/.installed
	$(BIN)/lookalike-budget --ledger $(LEDGER)

mlflow-ui: $(VENV)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(OUT)/mlflow.db

# Lint, format, types and the layer contracts (import-linter, [tool.importlinter] in pyproject.toml).
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml, docs/) into site/; warnings (a broken link or anchor, a page
# left out of the nav) fail it. make test builds it too (tests/test_docs.py).
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict -d site

# Two test processes (pytest-xdist): the suite is mostly single-threaded training and process
# start-up, so two workers on two cores take about two thirds of the serial time.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# Benchmarks (docs/utility.md and docs/performance.md): lift@20% of DP vs non-private vs gradient
# boosting on four real tables (3 repeats), DP vs non-private training throughput at equal batch
# (1M-value vocabularies too) and the DP step's fixed cost, export time and memory at 1M-10M
# users, training memory at 1M and 10M users, sharded data preparation (1 process vs 2 ranks).
# About 30 minutes.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/utility.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/dp_step_cost.py --users 400000 --epochs 6
	$(BIN)/python benchmarks/physical_batch.py
	$(BIN)/python benchmarks/export_scaling.py
	$(BIN)/python benchmarks/train_memory.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/prepare_shards.py

# Train and export on CUDA when a GPU is visible (says so and exits 0 otherwise).
gpu-check: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(OUT) multirun $(DEMO_DATA) $(ADULT_DATA)

# Break the privacy code one line at a time (tests/mutate.py) and show a test fails each time.
mutate: $(VENV)/.installed-dev
	$(BIN)/python tests/mutate.py
