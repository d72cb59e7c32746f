#!/usr/bin/env bash
# Send prediction requests to a ModelDeployment through the Gateway on the kind host ports, so the
# canary analysis has samples: one customer per request, REQUESTS requests (default 600), or for DURATION
# seconds when that is set (a whole rollout), with a predictor token signed by the kind credentials' JWT
# secret (data/kind/jwt-secret, written by make kind-secrets).
#
#   traffic.sh <modeldeployment> [namespace]
set -euo pipefail

name="${1:?usage: traffic.sh <modeldeployment> [namespace]}"
namespace="${2:-churn}"
requests="${REQUESTS:-600}"
duration="${DURATION:-0}"
port="${GATEWAY_PORT:-8443}"
kubectl="${KUBECTL:-kubectl}"
churnops="${CHURNOPS:-.venv/bin/churnops}"
secret_file="${JWT_SECRET_FILE:-data/kind/jwt-secret}"

host="${HOST:-$("$kubectl" -n "$namespace" get modeldeployment "$name" -o jsonpath='{.spec.serving.hostnames[0]}')}"
if [ -z "$host" ]; then
  echo "traffic.sh: modeldeployment/${name} has no spec.serving.hostnames; set HOST" >&2
  exit 2
fi
# The token must outlive the traffic: DURATION seconds (a whole rollout) or, by count, an hour; plus a margin.
ttl="${TOKEN_TTL:-$(( duration > 0 ? duration + 600 : 3600 ))}"
token="$("$churnops" token --subject e2e-traffic --role predictor --ttl-seconds "$ttl" --jwt-secret-file "$secret_file")"

ok=0
failed=0
i=0
while { [ "$duration" -gt 0 ] && [ "$SECONDS" -lt "$duration" ]; } || { [ "$duration" -eq 0 ] && [ "$i" -lt "$requests" ]; }; do
  i=$((i + 1))
  customer=$((100000 + (i * 7919) % 5000))
  # -k: the kind Gateway's certificate comes from a self-signed issuer.
  if curl -fsSk --max-time 5 --resolve "${host}:${port}:127.0.0.1" \
      -H "Authorization: Bearer ${token}" -H 'Content-Type: application/json' \
      -d "{\"instances\": [{\"customer_id\": ${customer}}]}" \
      "https://${host}:${port}/v1/models/${name}:predict" >/dev/null; then
    ok=$((ok + 1))
  else
    failed=$((failed + 1))
  fi
done
echo "traffic.sh: ${ok} answered, ${failed} failed of ${i} requests to ${host}"
[ "$ok" -gt 0 ]
