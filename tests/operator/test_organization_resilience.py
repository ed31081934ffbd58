"""Organization: drift comes back, Vault down, restart mid-deletion, refusal while jobs run,
two tenants side by side with nothing shared, drift ticks on a lagging watch."""

from __future__ import annotations

from typing import Any

import hvac
import hvac.exceptions
import pytest

from mesial.common.settings import Settings
from mesial.operator.metrics import RECONCILES
from mesial.operator.testing import Harness
from tests.operator.conftest import TcpProxy, eventually, organization_ready
from tests.operator.helpers import (
    ORG,
    SCANJOB,
    audit_events,
    condition,
    events,
    get,
    organization,
    ready,
    status,
    vault,
)

NP = ("networking.k8s.io/v1", "NetworkPolicy")
ROLE = ("rbac.authorization.k8s.io/v1", "Role")


async def test_drift_is_corrected_within_the_interval_with_an_event(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    name = org_name("drift")
    k8s = harness.client
    ns = f"mesial-org-{name}"
    await organization_ready(k8s, name)
    await k8s.delete(*NP, "mesial-default-deny", ns)
    await k8s.patch("v1", "ResourceQuota", "mesial-quota", {"spec": {"hard": {"pods": "999", "secrets": "5"}}}, ns)
    await k8s.patch(*ROLE, "mesial-aligner", {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}, ns)
    client = vault(operator_settings)
    client.write(f"auth/kubernetes/role/mesial-org-{name}", token_policies="root", audience="vault")

    async def restored() -> bool:
        deny = await k8s.get(*NP, "mesial-default-deny", ns)
        quota = await get(k8s, "v1", "ResourceQuota", "mesial-quota", ns)
        role = await get(k8s, *ROLE, "mesial-aligner", ns)
        vault_role = client.auth.kubernetes.read_role(f"mesial-org-{name}")
        return (
            deny is not None
            and quota["spec"]["hard"] == operator_settings.operator.tiers["small"].quota
            and role["rules"][0]["verbs"] == ["get"]
            and vault_role["token_policies"] == ["mesial-aligner"]
        )

    await eventually(restored, timeout=5 * operator_settings.operator.drift_interval_s + 5)

    async def reported() -> list[str] | None:
        messages = [e["message"] for e in await events(k8s, name) if e["reason"] == "DriftCorrected"]
        wanted = (
            "mesial-default-deny was missing",
            "mesial-quota edited: spec.hard",
            "mesial-aligner edited: rules",
            "Vault role",
        )
        return messages if all(any(w in m for m in messages) for w in wanted) else None

    await eventually(reported)


async def test_vault_down_is_reported_and_recovers(proxied_harness: Harness, vault_proxy: TcpProxy, org_name) -> None:
    name = org_name("vaultdown")
    k8s = proxied_harness.client
    await vault_proxy.down()
    await k8s.create(organization(name))

    async def vault_failing() -> dict[str, Any] | None:
        st = await status(k8s, name)
        return st if condition(st, "VaultReady").get("status") == "False" else None

    st = await eventually(vault_failing)
    assert st["phase"] == "Provisioning" and condition(st, "Ready")["status"] == "False"
    assert condition(st, "VaultReady")["reason"] == "VaultUnavailable"
    assert condition(st, "NamespaceReady")["status"] == "True" and condition(st, "NetworkReady")["status"] == "True"

    async def reported() -> bool:
        return any(e["reason"] == "SyncFailed" and "vault" in e["message"] for e in await events(k8s, name))

    await eventually(reported)
    await vault_proxy.up()
    st = await eventually(lambda: ready(k8s, name))
    assert st["keyVersion"] == 1


async def test_restart_mid_deletion_resumes_and_writes_one_receipt(
    proxied_harness: Harness, vault_proxy: TcpProxy, operator_settings: Settings, org_name
) -> None:
    name = org_name("restart")
    h = proxied_harness
    k8s = h.client
    await organization_ready(k8s, name)
    await h.runtime.store.put(name, "scans/a", b"scan")
    await vault_proxy.down()
    await k8s.delete(*ORG, name)

    async def waiting_at_shred() -> dict[str, Any] | None:
        st = await status(k8s, name)
        deleting = condition(st, "Deleting")
        return st if deleting.get("status") == "False" and "step shred" in deleting.get("message", "") else None

    st = await eventually(waiting_at_shred)
    assert st["phase"] == "Terminating" and st["deletion"]["storeCleared"] is True
    assert st["deletion"]["objectsDeleted"] == 1 and not st["deletion"].get("keyShredded")
    assert (await get(k8s, *ORG, name))["metadata"]["finalizers"] == [operator_settings.operator.finalizer]

    await h.stop_operator()  # the operator goes away midway
    k8s = h.client
    assert (await get(k8s, *ORG, name))["status"]["phase"] == "Terminating"
    await vault_proxy.up()
    await h.start_operator(operator_settings.model_copy(update={"vault": h.runtime.settings.vault}))
    await eventually(lambda: _gone(k8s, name))
    receipts = [e for e in audit_events(h.runtime) if e["action"] == "organization.deleted" and e["tenant"] == name]
    assert len(receipts) == 1 and receipts[0]["details"]["objects_deleted"] == 1
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault(operator_settings).secrets.transit.read_key(f"mesial-org-{name}", mount_point="transit")


async def test_deletion_waits_for_running_scanjobs_unless_forced(harness: Harness, org_name) -> None:
    name = org_name("busy")
    k8s = harness.client
    ns = f"mesial-org-{name}"
    await organization_ready(k8s, name)
    scanjob = {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": "case-1", "namespace": ns},
               "spec": {"scans": {"upper": "u1", "lower": "l1", "bites": ["b1"]}}}  # fmt: skip
    await k8s.create(scanjob)
    await eventually(lambda: _phase(k8s, ns, "case-1", "Pending"))
    await k8s.delete(*ORG, name)

    async def blocked() -> dict[str, Any] | None:
        deleting = condition(await status(k8s, name), "Deleting")
        return deleting if deleting.get("reason") == "DeletionBlocked" else None

    deleting = await eventually(blocked, timeout=40)
    assert "case-1" in deleting["message"] and "force" in deleting["message"]
    assert await k8s.get("v1", "Namespace", ns) is not None
    await k8s.patch(*ORG, name, {"spec": {"deletion": {"force": True}}})
    await eventually(lambda: _gone(k8s, name), timeout=40)

    left: list[Any] = []

    async def stopped() -> bool:
        left[:] = [await k8s.get(*SCANJOB, "case-1", ns), await k8s.get("batch/v1", "Job", "scanjob-case-1", ns)]
        return left == [None, None]

    try:
        await eventually(stopped, timeout=40)
    except AssertionError:
        raise AssertionError(f"left behind: {left}") from None


async def test_two_tenants_share_nothing(harness: Harness, operator_settings: Settings, org_name) -> None:
    a, b = org_name("alpha"), org_name("beta")
    k8s = harness.client
    await k8s.create(organization(a))
    await k8s.create(organization(b))
    st_a = await eventually(lambda: ready(k8s, a))
    st_b = await eventually(lambda: ready(k8s, b))
    assert st_a["namespace"] != st_b["namespace"] and st_a["keyFingerprint"] != st_b["keyFingerprint"]
    for own, other in ((a, b), (b, a)):
        for np in ("mesial-default-deny", "mesial-allow-egress"):
            policy = await get(k8s, *NP, np, f"mesial-org-{own}")
            assert other not in str(policy)
    # Each tenant's login role binds its own namespace's aligner to the one templated policy, which
    # resolves to that namespace's key (a login of a's Job using b's key: tests/policies, real TokenReview).
    root = vault(operator_settings)
    for own in (a, b):
        role = root.auth.kubernetes.read_role(f"mesial-org-{own}")
        assert role["bound_service_account_namespaces"] == [f"mesial-org-{own}"]
        assert role["token_policies"] == ["mesial-aligner"]
    # Deleting a leaves b whole.
    store = harness.runtime.store
    await store.put(a, "scans/x", b"a")
    await store.put(b, "scans/y", b"b")
    await k8s.delete(*ORG, a)
    await eventually(lambda: _gone(k8s, a))
    assert await store.read_bytes(b, "scans/y") == b"b"
    assert (await ready(k8s, b)) is not None
    assert root.secrets.transit.read_key(f"mesial-org-{b}", mount_point="transit")["data"]["latest_version"] == 1


async def _gone(k8s, name: str) -> bool:
    return await k8s.get(*ORG, name) is None


async def _phase(k8s, ns: str, name: str, phase: str) -> bool:
    obj = await k8s.get(*SCANJOB, name, ns)
    return bool(obj and (obj.get("status") or {}).get("phase") == phase)


async def test_a_drift_tick_on_a_lagging_watch_keeps_to_the_spec_as_it_is(
    harness: Harness, operator_settings: Settings, org_name
) -> None:
    """kopf hands the drift timer the body its watch last delivered. The spec changed since (tier
    small to large) is the one a drift pass keeps to: the large quota (applied by hand too) is not
    taken for drift and put back to the small one the lagging copy names."""
    name = org_name("lagdrift")
    k8s = harness.client
    ns = f"mesial-org-{name}"
    await organization_ready(k8s, name)
    large = operator_settings.operator.tiers["large"].quota
    ticks = RECONCILES.labels("organizations", "drift", "success")

    async def ticked(more: int) -> bool:
        return bool(ticks._value.get() >= seen + more)

    with harness.emulator.watch_held():
        await k8s.patch(*ORG, name, {"spec": {"tier": "large"}})
        seen = ticks._value.get()
        await eventually(lambda: ticked(2), timeout=5 * operator_settings.operator.drift_interval_s + 5)
        # the tick running at the change has ended: every pass from here on starts after it
        await k8s.patch("v1", "ResourceQuota", "mesial-quota", {"spec": {"hard": large}}, ns)
        seen = ticks._value.get()
        await eventually(lambda: ticked(3), timeout=5 * operator_settings.operator.drift_interval_s + 5)
        quota = await get(k8s, "v1", "ResourceQuota", "mesial-quota", ns)
        assert quota["spec"]["hard"] == large
        assert (await status(k8s, name)).get("observedGeneration") == 2
    assert not [e for e in await events(k8s, name) if e["reason"] == "DriftCorrected" and "quota" in e["message"]]
