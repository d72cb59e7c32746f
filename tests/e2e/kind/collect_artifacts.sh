#!/usr/bin/env bash
# On failure: what a reader needs to see why the kind run went wrong, written under OUT (default
# e2e-artifacts): events, ModelDeployments and InferenceServices as YAML, operator and predictor logs.
# Every command may fail (the cluster may be half up): collect what exists.
set -uo pipefail

out="${OUT:-e2e-artifacts}"
kubectl="${KUBECTL:-kubectl}"
mkdir -p "$out"

"$kubectl" get events -A --sort-by=.lastTimestamp >"$out/events.txt" 2>&1
"$kubectl" get modeldeployments,inferenceservices -A -o yaml >"$out/modeldeployments-inferenceservices.yaml" 2>&1
"$kubectl" get pods -A -o wide >"$out/pods.txt" 2>&1
"$kubectl" -n churnops-system logs -l app.kubernetes.io/component=operator --all-containers --prefix --tail=-1 \
  >"$out/operator.log" 2>&1
# kubectl logs has no --all-namespaces: the serving namespaces are those with predictor pods.
for ns in $("$kubectl" get pods -A -l component=predictor -o jsonpath='{.items[*].metadata.namespace}' 2>/dev/null | tr ' ' '\n' | sort -u); do
  "$kubectl" -n "$ns" logs -l component=predictor --all-containers --prefix --tail=2000 >"$out/predictors-${ns}.log" 2>&1
done
"$kubectl" -n kserve logs deployment/kserve-controller-manager --all-containers --tail=2000 >"$out/kserve-controller.log" 2>&1
"$kubectl" -n envoy-gateway-system logs deployment/envoy-gateway --tail=2000 >"$out/envoy-gateway.log" 2>&1
ls -l "$out"
