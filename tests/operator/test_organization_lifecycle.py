"""Organization: create, spec change in place, delete with receipt (real OpenBao and SeaweedFS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import yaml

from mesial.common.settings import Settings
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import ORG, audit_events, condition, events, get, organization, ready, status, vault

ROOT = Path(__file__).resolve().parents[2]


async def test_create_provisions_namespace_network_and_vault(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    name = org_name("create")
    k8s = harness.client
    await k8s.create(organization(name))
    st = await eventually(lambda: ready(k8s, name))
    ns = f"mesial-org-{name}"
    assert st["namespace"] == ns and st["keyName"] == f"mesial-org-{name}"
    assert st["keyVersion"] == 1 and len(st["keyFingerprint"]) == 32
    assert st["observedGeneration"] == 1
    for type_ in ("Ready", "NamespaceReady", "NetworkReady", "VaultReady"):
        assert condition(st, type_)["status"] == "True", type_

    labels = (await get(k8s, "v1", "Namespace", ns))["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["mesial.dev/tenant"] == name

    sa = await get(k8s, "v1", "ServiceAccount", "mesial-aligner", ns)
    assert sa["automountServiceAccountToken"] is False
    role = await get(k8s, "rbac.authorization.k8s.io/v1", "Role", "mesial-aligner", ns)
    assert role["rules"] == [{"apiGroups": ["mesial.dev"], "resources": ["scanjobs"], "verbs": ["get"]}]
    quota = await get(k8s, "v1", "ResourceQuota", "mesial-quota", ns)
    assert quota["spec"]["hard"] == operator_settings.operator.tiers["small"].quota
    deny = await get(k8s, "networking.k8s.io/v1", "NetworkPolicy", "mesial-default-deny", ns)
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allow = await get(k8s, "networking.k8s.io/v1", "NetworkPolicy", "mesial-allow-egress", ns)
    assert allow["spec"]["policyTypes"] == ["Egress"] and "ingress" not in allow["spec"]
    dns = allow["spec"]["egress"][0]
    assert {"protocol": "UDP", "port": 53} in dns["ports"]

    client = vault(operator_settings)
    key = client.secrets.transit.read_key(ns, mount_point="transit")["data"]  # named as the namespace
    assert key["exportable"] is False and key["type"] == "aes256-gcm96"
    with pytest.raises(hvac.exceptions.InvalidPath):  # the operator writes no policy
        client.sys.read_policy(f"mesial-org-{name}")
    role_data = client.auth.kubernetes.read_role(f"mesial-org-{name}")
    assert role_data["token_policies"] == ["mesial-aligner"]  # the chart's one aligner policy
    assert role_data["bound_service_account_names"] == ["mesial-aligner"]
    assert role_data["bound_service_account_namespaces"] == [ns]
    assert role_data["audience"] == "vault"

    evs = await eventually(lambda: events(k8s, name))
    reasons = {e["reason"] for e in evs}
    assert "Created" in reasons


async def test_spec_change_is_applied_in_place(harness: Harness, operator_settings: Settings, org_name) -> None:
    name = org_name("update")
    k8s = harness.client
    ns = await organization_ready(k8s, name)
    await k8s.patch(
        *ORG,
        name,
        {
            "spec": {
                "tier": "large",
                "keyRotationPeriod": "48h",
                "egress": {"extra": [{"cidr": "203.0.113.0/24", "ports": [443]}]},
            }
        },
    )

    async def applied():
        quota = await get(k8s, "v1", "ResourceQuota", "mesial-quota", ns)
        st = await status(k8s, name)
        return (
            quota["spec"]["hard"]["pods"] == "200" and st.get("observedGeneration") == 2 and st.get("phase") == "Ready"
        )

    await eventually(applied)
    allow = await get(k8s, "networking.k8s.io/v1", "NetworkPolicy", "mesial-allow-egress", ns)
    assert allow["spec"]["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    key = vault(operator_settings).secrets.transit.read_key(f"mesial-org-{name}", mount_point="transit")["data"]
    assert key["auto_rotate_period"] == 48 * 3600


async def test_delete_shreds_key_clears_store_and_writes_receipt(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    name = org_name("delete")
    k8s = harness.client
    await organization_ready(k8s, name)
    store = harness.runtime.store
    await store.put(name, "scans/s1", b"upper arch")
    await store.put(name, "scans/s2", b"lower arch", legal_hold=True)

    await k8s.delete(*ORG, name)
    await eventually(lambda: _gone(k8s, name))

    assert [m async for m in store.list(name)] == []
    client = vault(operator_settings)
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.transit.read_key(f"mesial-org-{name}", mount_point="transit")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.sys.read_policy(f"mesial-org-{name}")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.auth.kubernetes.read_role(f"mesial-org-{name}")
    assert await k8s.get("v1", "Namespace", f"mesial-org-{name}") is None
    receipts = [e for e in audit_events(harness.runtime) if e["action"] == "organization.deleted"]
    assert len(receipts) == 1
    details = receipts[0]["details"]
    assert details["objects_deleted"] == 2 and details["key_shredded"] is True
    assert "no_longer_unwraps" in details["shred_proof"]  # the collector's detail vocabulary


async def _gone(k8s, name: str) -> bool:
    return await k8s.get(*ORG, name) is None


async def test_an_organization_that_names_no_tier_rotation_or_force_gets_the_crds_defaults(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    """operator.md: `tier` default `small`, `deletion.force` default false. The emulator applies no
    CRD default (the API server does), so what the operator makes of a bare spec must be the CRD's:
    the small tier's quota, the key rotated every 720h, and a deletion that waits for running jobs."""
    crd = yaml.safe_load((ROOT / "crds" / "organization.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert (spec["tier"]["default"], spec["keyRotationPeriod"]["default"]) == ("small", "720h")
    assert spec["deletion"]["properties"]["force"]["default"] is False
    doc = " ".join((ROOT / "docs" / "operator.md").read_text().split())
    assert "(`small|medium|large`, default `small`)" in doc and "`deletion.force` (default false)" in doc
    name = org_name("bare")
    k8s = harness.client
    await k8s.create({**organization(name), "spec": {"displayName": "Lab"}})
    await eventually(lambda: ready(k8s, name))
    ns = f"mesial-org-{name}"
    quota = await get(k8s, "v1", "ResourceQuota", "mesial-quota", ns)
    assert quota["spec"]["hard"] == operator_settings.operator.tiers["small"].quota
    key = vault(operator_settings).secrets.transit.read_key(f"mesial-org-{name}", mount_point="transit")["data"]
    assert key["auto_rotate_period"] == 720 * 3600
    running = {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": "busy", "namespace": ns},
               "spec": {"scans": {"upper": "a", "lower": "b", "bites": ["c"]}}}  # fmt: skip
    await k8s.create(running)

    async def job_made() -> bool:
        return await k8s.get("batch/v1", "Job", "scanjob-busy", ns) is not None

    await eventually(job_made)
    await k8s.delete(*ORG, name)

    async def blocked() -> dict[str, Any] | None:
        st = await status(k8s, name)
        return st if condition(st, "Deleting").get("reason") == "DeletionBlocked" else None

    st = await eventually(blocked)
    assert "busy" in condition(st, "Deleting")["message"]
    assert await k8s.get("v1", "Namespace", ns) is not None
    await k8s.patch(*ORG, name, {"spec": {"deletion": {"force": True}}})
    await eventually(lambda: _gone(k8s, name))
