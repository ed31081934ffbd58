"""An Organization's life on a real API server: the chart's CRDs validate (schema and CEL), the
operator (the chart's Deployment, with its ServiceAccount) provisions under its ClusterRole,
Pod Security and quotas are the API server's, and deletion ends with the namespace controller."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from mesial.common.objectstore import ObjectStore
from mesial.common.vault import TenantKeys
from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import CHART, NAMESPACE, Kube, Release, VaultSetup, eventually, operator_pod
from tests.operator.helpers import organization

pytestmark = pytest.mark.usefixtures("operator_authorised")

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"


def ready(kube: Kube, name: str) -> dict[str, Any] | None:
    org = kube.get("organization", name)
    status = (org or {}).get("status") or {}
    return status if status.get("phase") == "Ready" else None


def _rules(node: Any) -> list[dict[str, str]]:
    """Every x-kubernetes-validations rule under ``node``."""
    if isinstance(node, dict):
        own = list(node.get("x-kubernetes-validations", []))
        return own + [r for value in node.values() for r in _rules(value)]
    if isinstance(node, list):
        return [r for value in node for r in _rules(value)]
    return []


def cel_message(kind: str, rule_part: str) -> str:
    """The message the chart's CRD gives for its CEL rule containing ``rule_part``."""
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] != kind:
            continue
        found = [rule["message"] for rule in _rules(crd) if rule_part in rule["rule"]]
        assert found, f"no CEL rule with {rule_part!r} in the {kind} CRD"
        return str(found[0])
    raise AssertionError(f"no CRD of kind {kind}")


def test_organization_becomes_ready_under_the_charts_rbac(kube: Kube, release: Release, vault: VaultSetup) -> None:
    kube.apply(organization("e2e-ready"))
    status = eventually(lambda: ready(kube, "e2e-ready"), timeout=120, what="Organization e2e-ready Ready")
    assert status["keyVersion"] >= 1 and status["keyName"] == "mesial-org-e2e-ready"
    assert status["namespace"] == "mesial-org-e2e-ready"

    # Printer columns, as `kubectl get morg` prints them.
    table = kube("get", "morg", "e2e-ready").stdout.splitlines()
    header = table[0].split()
    row = dict(zip(header, table[1].split(), strict=False))
    assert row["NAME"] == "e2e-ready" and row["PHASE"] == "Ready", table
    assert "mesial-org-e2e-ready" in table[1]

    ns = kube.json("get", "namespace", "mesial-org-e2e-ready")
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["mesial.dev/tenant"] == "e2e-ready"
    for kind, name in [
        ("serviceaccount", "mesial-aligner"),
        ("role", "mesial-aligner"),
        ("rolebinding", "mesial-aligner"),
        ("resourcequota", "mesial-quota"),
        ("limitrange", "mesial-limits"),
        ("networkpolicy", "mesial-default-deny"),
        ("networkpolicy", "mesial-allow-egress"),
        ("secret", "mesial-store"),
    ]:
        assert kube.get(kind, name, "-n", "mesial-org-e2e-ready") is not None, f"{kind}/{name} missing"
    # The quota is live: the API server's quota controller filled in its status.
    quota = eventually(
        lambda: kube.json("get", "resourcequota", "mesial-quota", "-n", "mesial-org-e2e-ready")["status"].get("hard")
    )
    assert quota

    # Vault: the key (named as the namespace) and the role bound to the tenant's ServiceAccount with
    # audience vault, granting the chart's one aligner policy; the operator wrote no policy.
    key = vault.client.secrets.transit.read_key("mesial-org-e2e-ready")["data"]
    assert key["exportable"] is False and key["latest_version"] == status["keyVersion"]
    role = vault.client.read("auth/kubernetes/role/mesial-org-e2e-ready")["data"]
    assert role["bound_service_account_names"] == ["mesial-aligner"]
    assert role["bound_service_account_namespaces"] == ["mesial-org-e2e-ready"]
    assert role["audience"] == "vault"
    assert role["token_policies"] == ["mesial-aligner"]
    assert not [p for p in vault.client.sys.list_acl_policies()["data"]["keys"] if p.startswith("mesial-org-")]

    # A pod without the restricted profile's settings is refused there by Pod Security admission.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "unrestricted", "namespace": "mesial-org-e2e-ready"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    refused = kube.create(pod, check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr


BAD_SPECS: list[tuple[str, dict[str, Any], str | tuple[str, str]]] = [
    # (kind, spec changes, an API server message fragment or a CEL rule of the CRD whose message must show)
    ("Organization", {"tier": "huge"}, 'Unsupported value: "huge"'),
    ("Organization", {"keyRotationPeriod": "1 week"}, "should match"),
    ("Organization", {"keyRotationPeriod": "10m"}, ("Organization", "duration('1h')")),
    ("Organization", {"keyRotationPeriod": "59m"}, ("Organization", "duration('1h')")),
    ("Organization", {"keyRotationPeriod": "8761h"}, ("Organization", "duration('8760h')")),
    ("Organization", {"keyRotationPeriod": "8760h1s"}, ("Organization", "duration('8760h')")),
    (
        "Organization",
        {"egress": {"extra": [{"cidr": f"10.0.{i}.0/24", "ports": [443]} for i in range(5)]}},
        ("Organization", "size(self.egress.extra)"),
    ),
    (
        "Organization",
        {"egress": {"extra": [{"cidr": "10.0.0.0/24", "ports": [443]}] * 2}},
        ("Organization", "exists_one"),
    ),
    (
        "Organization",
        {"egress": {"extra": [{"cidr": "169.254.169.254/32", "ports": [80]}]}},
        ("Organization", "169.254.0.0/16"),
    ),
    (
        "Organization",
        {"egress": {"extra": [{"cidr": "0.0.0.0/0", "ports": [443]}]}},
        ("Organization", "169.254.0.0/16"),
    ),
    ("Organization", {"egress": {"extra": [{"cidr": "203.0.113.5/24", "ports": [443]}]}}, ("Organization", "masked()")),
    ("Organization", {"displayName": ""}, "spec.displayName"),
    ("Organization", {"image": "evil"}, 'unknown field "spec.image"'),
    ("ScanJob", {"scans": {"upper": "../../x", "lower": "b", "bites": ["c"]}}, "should match"),
    ("ScanJob", {"scans": {"upper": "same", "lower": "same", "bites": ["c"]}}, ("ScanJob", "self.upper != self.lower")),
    ("ScanJob", {"scans": {"upper": "a", "lower": "b", "bites": ["a"]}}, ("ScanJob", "self.bites.all")),
    ("ScanJob", {"scans": {"upper": "a", "lower": "b", "bites": ["c", "d", "e"]}}, "must have at most 2 items"),
    ("ScanJob", {"timeouts": {"activeDeadlineSeconds": 10**7}}, "should be less than or equal to"),
    ("RetentionPolicy", {"maxAgeDays": 4000}, "should be less than or equal to 3650"),
    ("RetentionPolicy", {"covers": ["everything"]}, 'Unsupported value: "everything"'),
    ("RetentionPolicy", {"maxAgeDays": 1, "sweepInterval": "48h"}, ("RetentionPolicy", "duration(self.sweepInterval)")),
]


@pytest.mark.parametrize(
    ("kind", "change", "expected"), BAD_SPECS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_SPECS)]
)
def test_api_server_refuses_bad_specs_with_the_crds_messages(
    kube: Kube, release: Release, kind: str, change: dict[str, Any], expected: str | tuple[str, str]
) -> None:
    example = next(d for p in sorted(EXAMPLES.glob("*.yaml")) if (d := yaml.safe_load(p.read_text()))["kind"] == kind)
    doc = copy.deepcopy(example)
    doc["metadata"]["name"] = f"bad-{kind.lower()}"
    if "namespace" in doc["metadata"]:
        doc["metadata"]["namespace"] = "default"  # validation comes before the operator's admission
    doc["spec"].update(change)
    result = kube("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    fragment = cel_message(*expected) if isinstance(expected, tuple) else expected
    assert result.returncode != 0, f"accepted: {doc}"
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("period", ["1h", "8760h", "525600m"])
def test_api_server_accepts_key_rotation_periods_at_the_bounds(kube: Kube, release: Release, period: str) -> None:
    """keyRotationPeriod's bounds (operator.md: 1h..8760h) are inclusive: each end, however written,
    is accepted by the CRD (the refusals one past each end are in BAD_SPECS)."""
    doc = organization("bounds", keyRotationPeriod=period)
    result = kube("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode == 0, result.stderr


def test_scanjob_spec_is_immutable(kube: Kube, release: Release) -> None:
    doc = next(d for p in sorted(EXAMPLES.glob("*.yaml")) if (d := yaml.safe_load(p.read_text()))["kind"] == "ScanJob")
    doc = copy.deepcopy(doc)
    doc["metadata"].update(name="immutable", namespace="default")
    kube("apply", "-f", "-", input=yaml.safe_dump(doc))
    try:
        patch = '{"spec": {"options": {"contactThresholdMm": 0.5}}}'
        result = kube("patch", "scanjob", "immutable", "-n", "default", "--type", "merge", "-p", patch, check=False)
        assert result.returncode != 0 and cel_message("ScanJob", "self == oldSelf") in result.stderr, result.stderr
    finally:
        kube("delete", "scanjob", "immutable", "-n", "default", "--wait=false", check=False)


def test_organization_name_too_long_for_a_label_is_refused(kube: Kube, release: Release) -> None:
    result = kube("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(organization("x" * 53)), check=False)
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


RECEIPTS = "/tmp/mesial/audit/operator.jsonl"  # the chart's path when no API is wired: its /tmp volume


def receipts(kube: Kube, cluster: E2ECluster) -> list[dict[str, Any]]:
    """The operator's audit receipts (no API wired: its JSON Lines file) in its running pods."""
    pods = kube.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    texts = [
        cluster.pod_file(p, "operator", RECEIPTS) or ""
        for p in pods
        if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]


def test_deletion_shreds_the_key_and_the_namespace_controller_removes_the_namespace(
    kube: Kube, release: Release, vault: VaultSetup, seaweedfs: Any, cluster: E2ECluster
) -> None:
    from tests.e2e_cluster.test_scanjob import root_settings

    kube.apply(organization("e2e-gone"))
    eventually(lambda: ready(kube, "e2e-gone"), timeout=120, what="Organization e2e-gone Ready")
    settings = root_settings(vault, seaweedfs)

    async def put_and_list(put: bool) -> list[str]:
        async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:
            if put:
                await store.put("e2e-gone", "scans/s1", b"solid\n")
            return [meta.key async for meta in store.list("e2e-gone")]

    assert asyncio.run(put_and_list(True))
    kube("delete", "organization", "e2e-gone", "--wait=false")
    eventually(lambda: kube.get("organization", "e2e-gone") is None, timeout=180, what="Organization e2e-gone gone")
    # The namespace is removed by the namespace controller (its content deleted, finalizers run).
    eventually(lambda: kube.get("namespace", "mesial-org-e2e-gone") is None, timeout=120, what="namespace removed")
    with pytest.raises(hvac.exceptions.InvalidPath):  # crypto-shredded
        vault.client.secrets.transit.read_key("mesial-org-e2e-gone")
    assert vault.client.read("auth/kubernetes/role/mesial-org-e2e-gone") is None
    assert asyncio.run(put_and_list(False)) == []  # the tenant's prefix is empty
    receipt = [
        r for r in receipts(kube, cluster) if r.get("action") == "organization.deleted" and "e2e-gone" in json.dumps(r)
    ]
    assert receipt, receipts(kube, cluster)


def test_drift_is_restored_with_events(kube: Kube, release: Release) -> None:
    kube.apply(organization("e2e-drift"))
    eventually(lambda: ready(kube, "e2e-drift"), timeout=120, what="Organization e2e-drift Ready")
    ns = "mesial-org-e2e-drift"
    original = kube.json("get", "resourcequota", "mesial-quota", "-n", ns)["spec"]["hard"]
    kube("delete", "networkpolicy", "mesial-default-deny", "-n", ns)
    kube("patch", "resourcequota", "mesial-quota", "-n", ns, "--type=merge", "-p", '{"spec":{"hard":{"pods":"999"}}}')

    def restored() -> bool:
        quota = kube.json("get", "resourcequota", "mesial-quota", "-n", ns)["spec"]["hard"]
        return quota == original and kube.get("networkpolicy", "mesial-default-deny", "-n", ns) is not None

    eventually(restored, timeout=60, what="NetworkPolicy and quota restored")

    def drift_events() -> list[str]:
        events = kube.json("get", "events", "-A", "--field-selector", "involvedObject.name=e2e-drift")["items"]
        return [e["message"] for e in events if e["reason"] == "DriftCorrected"]

    messages = " ".join(eventually(drift_events, timeout=30, what="DriftCorrected events"))
    assert "mesial-default-deny" in messages or "NetworkPolicy" in messages, messages


def test_operator_killed_mid_provisioning_converges(kube: Kube, release: Release, cluster: E2ECluster) -> None:
    """The operator's process is killed (SIGKILL) right after an Organization is created; the node
    (agent or kubelet) restarts the container (restartPolicy Always) and the Organization still
    becomes Ready."""
    before = operator_pod(kube, running=True)
    assert before is not None
    kube.apply(organization("e2e-crash"))
    statuses = before["status"]["containerStatuses"]
    cluster.kill_container(before, "operator")

    def restarted() -> bool:
        pod = operator_pod(kube, running=True)
        return pod is not None and pod["status"]["containerStatuses"][0]["restartCount"] > statuses[0]["restartCount"]

    eventually(restarted, timeout=60, what="the operator container restarted")
    status = eventually(lambda: ready(kube, "e2e-crash"), timeout=120, what="Organization e2e-crash Ready")
    assert status["keyVersion"] >= 1


def test_operator_killed_mid_deletion_converges(
    kube: Kube, release: Release, vault: VaultSetup, cluster: E2ECluster
) -> None:
    """The operator's process is killed (SIGKILL) right after an Organization's deletion starts; the
    restarted operator resumes it: the Organization, its namespace and its key are gone."""
    kube.apply(organization("e2e-crash-del"))
    eventually(lambda: ready(kube, "e2e-crash-del"), timeout=120, what="Organization e2e-crash-del Ready")
    pod = operator_pod(kube, running=True)
    assert pod is not None
    status = pod["status"]["containerStatuses"][0]
    kube("delete", "organization", "e2e-crash-del", "--wait=false")
    cluster.kill_container(pod, "operator")
    eventually(lambda: kube.get("organization", "e2e-crash-del") is None, timeout=180, what="Organization gone")
    eventually(lambda: kube.get("namespace", "mesial-org-e2e-crash-del") is None, timeout=120, what="namespace gone")
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault.client.secrets.transit.read_key("mesial-org-e2e-crash-del")
    restarted = operator_pod(kube, running=True)
    assert (
        restarted is not None and restarted["status"]["containerStatuses"][0]["restartCount"] > status["restartCount"]
    )
