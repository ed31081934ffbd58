#!/usr/bin/env bash
# End-to-end on a kind cluster (needs Docker): CRDs, an Organization, a ScanJob, a RetentionPolicy.
# `make e2e` calls this; the pytest e2e tests call it too and skip where Docker is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.tools/bin:$root/.venv/bin:$PATH"
cluster=${MESIAL_E2E_CLUSTER:-mesial-e2e}
command -v docker >/dev/null || { echo "docker is not installed: kind cannot run here" >&2; exit 2; }
command -v kind >/dev/null || { echo "kind is not installed" >&2; exit 2; }
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s
kubectl config use-context "kind-$cluster"
kubectl apply -f "$root/crds/"
kubectl wait --for=condition=Established crd --all --timeout=60s
# The operator runs from this checkout against the cluster (kubeconfig login).
mesial operator run --standalone --liveness "" &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT
kubectl apply -f "$root/crds/examples/01-organization.yaml"
kubectl wait morg/acme-dental --for=jsonpath='{.status.phase}'=Ready --timeout=120s
kubectl apply -f "$root/crds/examples/"
kubectl get morg,msj,mrp -A
kubectl delete morg/acme-dental --timeout=180s
