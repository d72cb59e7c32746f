# ChurnOps — run `make` or `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
DATA_DIR   ?= data
UV_VERSION := 0.13.8
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
VENV       := .venv
BIN        := $(VENV)/bin
# Compile .pyc at install time: where PYTHONDONTWRITEBYTECODE is set, every start would otherwise
# recompile Feast, Great Expectations and pandas (about 10 s).
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
		/^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Setup

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock models/contract/pyproject.toml operators/pyproject.toml | $(UV)
	$(UV) sync --frozen
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with the locked dependencies (uv.lock)

.PHONY: lock
lock: | $(UV) ## Re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

##@ Run

.PHONY: demo
demo: install ## Main job: data -> features -> Feast -> AutoML -> registry -> batch + online scoring with reasons
	$(BIN)/churnops --data-dir $(DATA_DIR) demo

.PHONY: demo-cluster-store
demo-cluster-store: install ## Same, on the cluster store (Redis + PostgreSQL from CHURNOPS_* variables)
	$(BIN)/churnops --data-dir $(DATA_DIR) demo --mode cluster

.PHONY: serve
serve: install ## Online predictor for the champion on :8080 (after `make demo`); tokens: churnops token --help
	OMP_NUM_THREADS=1 $(BIN)/churnops --data-dir $(DATA_DIR) serve --model champion --model challenger

.PHONY: pipelines
pipelines: install ## Compile the KFP pipelines (training, batch scoring) into pipelines/compiled/
	$(BIN)/python -c "from churnops_pipelines.training import compile_pipeline; compile_pipeline('pipelines/compiled/churn_training.yaml')"
	$(BIN)/python -c "from churnops_pipelines.scoring import compile_pipeline; compile_pipeline('pipelines/compiled/churn_batch_scoring.yaml')"

.PHONY: dashboards
dashboards: install ## Regenerate the Grafana dashboards (manifests/monitoring/dashboards/*.json) from churnops.monitoring.dashboards
	$(BIN)/python -m churnops.monitoring.dashboards manifests/monitoring/dashboards

.PHONY: catalog
catalog: install ## Regenerate feature_repo/FEATURES.md from the feature definitions
	$(BIN)/churnops features catalog

##@ Quality

.PHONY: lint
lint: install ## ruff (lint, format), mypy --strict, feature catalog up to date
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/churnops features catalog --check

.PHONY: test
test: lint ## The whole suite: lint + unit + integration (needs redis-server, prometheus, PostgreSQL on 127.0.0.1)
	$(BIN)/pytest

.PHONY: format
format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

##@ Benchmarks

.PHONY: bench-features
bench-features: install ## Online read p50/p99 (SQLite, Redis) and materialization rows/s; BENCH_CUSTOMERS=20000
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_features.py

.PHONY: bench-serving
bench-serving: install ## Online p50/p95/p99 + req/s vs mlflow models serve and bare KServe; batch rows/min (needs wrk)
	@command -v wrk >/dev/null || { echo "bench-serving needs wrk (Debian: apt-get install wrk)"; exit 1; }
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_serving.py --data-dir $(DATA_DIR)

.PHONY: bench-operator
bench-operator: install ## Canary verdicts vs a fixed-threshold rule on the same streams; reconcile rate and memory at 100 resources
	$(BIN)/python tests/benchmarks/bench_operator.py

.PHONY: bench-train
bench-train: install ## Full AutoML on 50,000 customers: wall time, peak memory, trials, vs a LightGBM baseline
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_train.py

.PHONY: bench-predlog
bench-predlog: install ## Prediction log events/min through the queue (Parquet, PostgreSQL) and read-back, vs raw pyarrow
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_predlog.py

##@ Kubernetes (needs Docker and kind)

.PHONY: kind-up
kind-up: ## Create a local kind cluster from kind-config.yaml
	@command -v kind >/dev/null || { echo "kind is not installed: see https://kind.sigs.k8s.io (needs Docker)"; exit 1; }
	kind create cluster --name churnops --config kind-config.yaml

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name churnops

.PHONY: clean
clean: ## Remove generated data and caches (keeps .venv)
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
