#!/usr/bin/env bash
# Register a new version of the churn model in the cluster's MLflow, as the chart's bootstrap does:
# a Job cloned from the bootstrap features Job (same image, environment, service account and labels,
# so the same NetworkPolicies apply) that generates data, builds features and trains with
# `churnops train --mode cluster`; a version that passes the gates becomes the challenger.
#
#   register_version.sh good     # another seed: a sound version, expected to be promoted
#   register_version.sh broken   # trained on data drifted from day 0 with the gates opened: its scores
#                                # do not match the live population, expected to be rolled back
set -euo pipefail

kind="${1:?usage: register_version.sh good|broken}"
namespace="${NAMESPACE:-churnops-system}"
source_job="${SOURCE_JOB:-churnops-bootstrap-features}"
customers="${CUSTOMERS:-5000}"
kubectl="${KUBECTL:-kubectl}"

case "$kind" in
  good)
    seed=2
    generate="--seed ${seed}"
    gates=""
    ;;
  broken)
    seed=3
    generate="--seed ${seed} --drift both --drift-start-day 0"
    gates="--min-auc 0 --max-brier 1 --max-fairness-gap 1 --max-auc-regression 1"
    ;;
  *)
    echo "register_version.sh: unknown kind '${kind}' (good or broken)" >&2
    exit 2
    ;;
esac

job="churnops-e2e-version-${kind}-$(date +%s)"
script="churnops --data-dir /tmp/churnops data generate --customers ${customers} ${generate}
churnops --data-dir /tmp/churnops features build
churnops --data-dir /tmp/churnops train --mode cluster --tracking-uri \"\$MLFLOW_TRACKING_URI\" --budget-minutes 3 --seed ${seed} ${gates}"

# Drop what the API server owns (uid, selector, the controller's labels) and the Helm hook annotations.
"$kubectl" -n "$namespace" get job "$source_job" -o json \
  | jq --arg name "$job" --arg script "$script" '
      {apiVersion, kind,
       metadata: {name: $name, namespace: .metadata.namespace, labels: (.metadata.labels // {})},
       spec: (.spec
         | del(.selector)
         | del(.template.metadata.labels["controller-uid", "batch.kubernetes.io/controller-uid",
                                         "job-name", "batch.kubernetes.io/job-name"])
         | .template.spec.containers[0].args = [$script])}' \
  | "$kubectl" create -f -

echo "waiting for job/${job} (training takes a few minutes)"
if ! "$kubectl" -n "$namespace" wait --for=condition=complete "job/${job}" --timeout=30m; then
  "$kubectl" -n "$namespace" logs "job/${job}" --tail=200 || true
  exit 1
fi
"$kubectl" -n "$namespace" logs "job/${job}" --tail=20
