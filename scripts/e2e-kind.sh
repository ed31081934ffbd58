#!/usr/bin/env bash
# `make e2e-kind`: the e2e scenarios of tests/e2e_cluster on a kind cluster (needs Docker).
# Without a Docker daemon it says so and exits 2 before building anything: a skip would let a run
# that tested nothing pass. Then: kind (pinned, `go install` into .tools/bin) and the image
# (`make image`, unless .tools/image/mesial.oci.tar exists), and pytest with
# MESIAL_E2E_CLUSTER=kind, which creates the cluster, loads the image, runs the scenarios and
# deletes the cluster (tests/cluster/kind.py, tests/e2e_cluster/backends.py; docs/testing.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.tools/bin:$root/.venv/bin:$PATH"
kind_version=$(sed -n 's/^KIND_VERSION = "\(.*\)"/\1/p' "$root/tests/cluster/kind.py")

if ! command -v docker >/dev/null; then
  echo "e2e-kind: docker is not installed: kind runs its nodes as Docker containers (\`make e2e\` runs the same scenarios without Docker)" >&2
  exit 2
fi
if ! out=$(docker info --format '{{.ServerVersion}}' 2>&1) || [ -z "$out" ]; then
  echo "e2e-kind: Docker's daemon does not answer (\`docker info\`: $(tail -1 <<<"$out")); \`make e2e\` runs the same scenarios without Docker" >&2
  exit 2
fi
if [ "$(kind version 2>/dev/null | awk '{print $2}')" != "$kind_version" ]; then
  echo "e2e-kind: installing kind $kind_version into .tools/bin (go install, Go module proxy)"
  GOBIN="$root/.tools/bin" go install "sigs.k8s.io/kind@$kind_version"
fi
if [ ! -f "$root/.tools/image/mesial.oci.tar" ]; then
  make -C "$root" image
fi
cd "$root"
MESIAL_E2E_CLUSTER=kind exec .venv/bin/python -P -m pytest tests/e2e_cluster ${PYTEST_ARGS:-}
