"""The chart's API on the real control plane: its Deployment's pod (the pre-install hook migrated its
database), reached through its Service; the platform admin and the operator's API key made as
docs/install.md says (step 6, with a pod of the API's own template in place of `kubectl exec`); a job
started through the API becomes a ScanJob, its Job runs in the cluster, the operator reports the
result to the API, and the artifact comes back decrypted through a signed link."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesial.aligner.samples import generate_case, write_case
from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import (
    NAMESPACE,
    Kube,
    Release,
    eventually,
    operator_pod,
)
from tests.e2e_cluster.test_organization import ready
from tests.operator.helpers import organization

pytestmark = pytest.mark.usefixtures("operator_authorised")

ORG = "e2e-api"
NS = f"mesial-org-{ORG}"


def run_as_api(kube: Kube, cluster: E2ECluster, *args: str, namespace: str = NAMESPACE) -> str:
    """`kubectl exec deploy/mesial-api -- mesial ARGS` as every backend allows it (the node agent has
    no kubelet API, so no exec): a pod of the API Deployment's own template (its ServiceAccount, environment, volumes,
    Vault role) running ``mesial ARGS``; its output. Labelled apart, so the API Service does not
    select it."""
    deployment = kube.json("get", "deployment", "mesial-api", "-n", namespace)
    template = deployment["spec"]["template"]
    name = f"mesial-api-admin-{secrets.token_hex(3)}"
    labels = {**template["metadata"]["labels"], "app.kubernetes.io/component": "api-admin"}
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    container = spec["containers"][0]
    container["args"] = list(args)
    for probe in ("readinessProbe", "livenessProbe"):
        container.pop(probe, None)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels}}
    kube.create({**pod, "spec": spec})

    def done() -> dict[str, Any] | None:
        current = kube.get("pod", name, "-n", namespace)
        return current if (current or {}).get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    finished = eventually(done, timeout=120, what=f"mesial {' '.join(args)}")
    output = cluster.pod_log(finished, container["name"])
    kube("delete", "pod", name, "-n", namespace, "--wait=false")
    assert finished["status"]["phase"] == "Succeeded", output[-3000:]
    return output


def printed_key(output: str) -> str:
    """The key a `mesial admin` command printed (its last line; the node agent's log starts with a header)."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("--- ")]
    return lines[-1].strip()


def restart_operator(kube: Kube) -> None:
    before = operator_pod(kube, running=True)
    kube("-n", NAMESPACE, "rollout", "restart", "deploy/mesial-operator")

    def replaced() -> dict[str, Any] | None:
        pod = operator_pod(kube, running=True)
        return pod if pod and (before is None or pod["metadata"]["uid"] != before["metadata"]["uid"]) else None

    eventually(replaced, timeout=120, what="the operator pod restarted")


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self, method: str, path: str, key: str | None = None, body: Any = None, data: bytes | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:  # nothing listening behind the Service (yet)
            return 0, repr(exc).encode()

    def json(self, method: str, path: str, key: str | None = None, body: Any = None, data: bytes | None = None) -> Any:
        status, raw = self.call(method, path, key, body, data)
        assert 200 <= status < 300, f"{method} {path}: {status} {raw[:500]!r}"
        return json.loads(raw)


@pytest.fixture(scope="module")
def wired(kube: Kube, release: Release, cluster: E2ECluster) -> Iterator[dict[str, str]]:
    """docs/install.md step 6: the platform admin's key and the operator's API key, the operator
    restarted with it. Undone afterwards (the other tests read the operator's own receipt file)."""
    platform = printed_key(run_as_api(kube, cluster, "admin", "bootstrap", "--force"))
    operator_key = printed_key(run_as_api(kube, cluster, "admin", "service-key", "operator"))
    kube(
        "-n", NAMESPACE, "create", "secret", "generic", "mesial-operator-api-key",
        f"--from-literal=service-key={operator_key}",
    )  # fmt: skip
    restart_operator(kube)
    try:
        yield {"platform": platform}
    finally:
        kube("-n", NAMESPACE, "delete", "secret", "mesial-operator-api-key")
        restart_operator(kube)


def test_api_serves_through_its_service(kube: Kube, release: Release, cluster: E2ECluster) -> None:
    client = Client(cluster.service_url(NAMESPACE, "mesial-api", 8080))
    eventually(lambda: client.call("GET", "/readyz")[0] == 200, timeout=120, what="the API ready behind its Service")
    # The migrate hook ran before the API started (helm deletes it once it succeeded).
    assert kube.get("job", "mesial-migrate", "-n", NAMESPACE) is None
    status, _ = client.call("GET", "/v1/me", key="not-a-key")
    assert status == 401


@pytest.fixture(scope="module")
def tenant(kube: Kube, cluster: E2ECluster, wired: dict[str, str]) -> str:
    """The Organization (`kubectl apply`, Ready), the API's organization and its first org-admin key."""
    client = Client(cluster.service_url(NAMESPACE, "mesial-api", 8080))
    kube.apply(organization(ORG))
    eventually(lambda: ready(kube, ORG), timeout=120, what=f"Organization {ORG} Ready")
    client.json("POST", "/v1/orgs", wired["platform"], {"name": ORG})
    key: str = client.json("POST", f"/v1/orgs/{ORG}/keys", wired["platform"], {"role": "org-admin"})["key"]
    return key


def test_job_result_reported_to_the_api_and_artifact_through_a_signed_link(
    kube: Kube, release: Release, cluster: E2ECluster, tenant: str, tmp_path: Path
) -> None:
    client = Client(cluster.service_url(NAMESPACE, "mesial-api", 8080))
    admin = tenant

    files = write_case(generate_case(7, vertices=8_000), tmp_path)
    ids = {}
    for kind in ("upper", "lower", "bite"):
        ids[kind] = client.json("POST", f"/v1/scans?kind={kind}", admin, data=files[kind].read_bytes())["id"]
    job = client.json("POST", "/v1/jobs", admin, {"upper": ids["upper"], "lower": ids["lower"], "bites": [ids["bite"]]})
    # The API created the ScanJob in the tenant's namespace with its own ServiceAccount.
    scanjobs = eventually(lambda: kube.json("get", "scanjobs", "-n", NS)["items"], timeout=30, what="the API's ScanJob")
    assert len(scanjobs) == 1

    def reported() -> dict[str, Any] | None:
        view: dict[str, Any] = client.json("GET", f"/v1/jobs/{job['id']}", admin)
        return view if view["state"] in ("succeeded", "failed") else None

    final = eventually(reported, timeout=600, interval=3, what="the job's result reported to the API")
    scanjob = kube.json("get", "scanjob", scanjobs[0]["metadata"]["name"], "-n", NS)
    assert final["state"] == "succeeded", (final, scanjob.get("status"))
    assert final["result"] == scanjob["status"]["result"] and final["result"] in ("ok", "not_confident")
    assert final["finished_at"], final

    artifacts = {a["name"]: a for a in client.json("GET", f"/v1/jobs/{job['id']}/artifacts", admin)["items"]}
    assert "result.json" in artifacts, artifacts
    link = client.json("POST", f"/v1/jobs/{job['id']}/artifacts/result.json/link", admin)
    status, raw = client.call("GET", link["url"])  # no credential: the link is the credential
    assert status == 200, raw[:300]
    result = json.loads(raw)
    assert result["status"] == final["result"]
    assert len(raw) == artifacts["result.json"]["size"]
    # A link with one character changed is refused.
    token = link["url"].rsplit("/", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    status, _ = client.call("GET", link["url"].rsplit("/", 1)[0] + "/" + forged)
    assert status in (401, 403, 404), status


def test_organization_deletion_receipt_reaches_the_api_audit_chain(
    kube: Kube, release: Release, cluster: E2ECluster, tenant: str, tmp_path: Path
) -> None:
    """Deleting the Organization (after the job above): the operator shreds its key and sends its
    `organization.deleted` receipt to the API's collector; the tenant's chain, exported by its auditor,
    holds it and verifies offline."""
    client = Client(cluster.service_url(NAMESPACE, "mesial-api", 8080))
    auditor = client.json("POST", "/v1/keys", tenant, {"role": "auditor"})["key"]
    kube("delete", "organization", ORG, "--wait", "--timeout=180s")
    eventually(lambda: kube.get("namespace", NS) is None, timeout=120, what=f"namespace {NS} removed")

    def exported() -> bytes | None:
        status, raw = client.call("GET", "/v1/audit/export", auditor)
        assert status == 200, raw[:300]
        return raw if b'"organization.deleted"' in raw else None

    raw = eventually(exported, timeout=60, interval=2, what="the deletion receipt in the tenant's chain")
    receipts = [json.loads(line) for line in raw.splitlines() if b'"organization.deleted"' in line]
    assert len(receipts) == 1, receipts
    export = tmp_path / "audit.jsonl"
    export.write_bytes(raw)
    mesial = str(Path(sys.executable).parent / "mesial")
    verified = subprocess.run([mesial, "audit", "verify", str(export)], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
