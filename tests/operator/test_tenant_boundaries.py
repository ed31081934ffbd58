"""Tenant boundaries the operator holds against someone with a namespace, a Job or a status of their own.

- a pre-existing ``mesial-org-<name>`` namespace is never adopted, bound to Vault or deleted;
- every handler asks one question, "is this the live tenant namespace the operator
  created?", so a namespace that merely carries a tenant's label gets nothing;
- status is a record, not a proof: deletion checks each step in the world, and a Job
  with the right name but not made by the operator is never taken as the ScanJob's own.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import hvac.exceptions
import pytest

from mesial.common.settings import Settings
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually, organization_ready
from tests.operator.helpers import (
    ORG,
    POLICY,
    SCANJOB,
    audit_events,
    condition,
    events,
    organization,
    ready,
    status,
    vault,
)

JOB = ("batch/v1", "Job")
RBAC = "rbac.authorization.k8s.io/v1"


def scanjob(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": name, "namespace": ns},
            "spec": {"scans": {"upper": "scan-u", "lower": "scan-l", "bites": ["scan-b"]}}}  # fmt: skip


def foreign_job(name: str, ns: str) -> dict[str, Any]:
    """A Job someone else made: another image, no owner reference."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "x", "image": "someone/else:1"}]}}}}  # fmt: skip


async def sj_status(k8s: Any, ns: str, name: str) -> dict[str, Any]:
    obj = await k8s.get(*SCANJOB, name, ns)
    return dict((obj or {}).get("status") or {})


async def test_a_foreign_namespace_is_refused_never_adopted_bound_or_deleted(
    harness: Harness, operator_settings: Settings, org_name: Any
) -> None:
    name = org_name("takeover")
    ns = f"mesial-org-{name}"
    k8s = harness.client
    # someone else's namespace, with their own RoleBinding, made before the Organization
    await k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "x"}}})
    binding = {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": "theirs", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]}  # fmt: skip
    await k8s.create(binding)
    await k8s.create(organization(name))

    async def refused() -> dict[str, Any] | None:
        st = await status(k8s, name)
        return st if condition(st, "NamespaceReady").get("reason") == "NamespaceNotOwned" else None

    st = await eventually(refused)
    assert st["phase"] != "Ready" and condition(st, "Ready")["status"] == "False"
    assert ns in condition(st, "NamespaceReady")["message"]
    reasons = {e["reason"] for e in await eventually(lambda: events(k8s, name))}
    assert "NamespaceNotOwned" in reasons
    live = await k8s.get("v1", "Namespace", ns)
    assert live is not None and live["metadata"]["labels"] == {"team": "x"}  # not patched
    assert await k8s.get("v1", "ServiceAccount", "mesial-aligner", ns) is None
    with pytest.raises(hvac.exceptions.InvalidPath):  # the tenant's Vault role is never bound to it
        vault(operator_settings).auth.kubernetes.read_role(f"mesial-org-{name}")
    # deleting the Organization leaves the namespace and its bindings to their owner
    await k8s.delete(*ORG, name)
    await eventually(lambda: _gone(k8s, name), timeout=40)
    assert await k8s.get("v1", "Namespace", ns) is not None
    assert await k8s.get(RBAC, "RoleBinding", "theirs", ns) is not None


async def test_a_retention_policy_in_a_namespace_labelled_with_a_victim_is_refused(
    harness: Harness, org_name: Any
) -> None:
    victim = org_name("victim")
    k8s = harness.client
    await organization_ready(k8s, victim)
    store = harness.runtime.store
    await store.put(victim, "scans/s1", b"the victim's scan")
    harness.runtime.clock = lambda: datetime.now(UTC) + timedelta(days=400)
    await k8s.create({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "mine", "labels": {"mesial.dev/tenant": victim}}})  # fmt: skip
    await k8s.create({"apiVersion": "mesial.dev/v1alpha1", "kind": "RetentionPolicy",
                      "metadata": {"name": "wipe", "namespace": "mine"},
                      "spec": {"maxAgeDays": 1, "sweepInterval": "1m"}})  # fmt: skip

    async def rejected() -> dict[str, Any] | None:
        obj = await k8s.get(*POLICY, "wipe", "mine")
        st = dict((obj or {}).get("status") or {})
        return st if st.get("phase") == "Rejected" else None

    st = await eventually(rejected)
    assert st["reason"] == "NotATenantNamespace"
    assert await store.exists(victim, "scans/s1")
    # the same label on a namespace named like the victim's would not help either: that one is the operator's


async def test_deletion_proves_each_step_in_the_world_not_from_status(
    harness: Harness, operator_settings: Settings, org_name: Any
) -> None:
    name = org_name("forged")
    k8s = harness.client
    await organization_ready(k8s, name)
    store = harness.runtime.store
    await store.put(name, "scans/s1", b"upper arch")
    # a hand-written record of steps that never happened
    forged = {"startedAt": "2026-01-01T00:00:00Z", "storeCleared": True, "keyShredded": True, "vaultCleared": True,
              "scanJobsStopped": True, "shredProof": "made_up"}  # fmt: skip
    await k8s.patch(*ORG, name, {"status": {"deletion": forged}}, status=True)
    await k8s.delete(*ORG, name)
    await eventually(lambda: _gone(k8s, name), timeout=40)
    assert [m async for m in store.list(name)] == []
    client = vault(operator_settings)
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.transit.read_key(f"mesial-org-{name}", mount_point="transit")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.auth.kubernetes.read_role(f"mesial-org-{name}")
    receipt = next(e for e in audit_events(harness.runtime) if e["action"] == "organization.deleted"
                   and e["tenant"] == name)  # fmt: skip
    assert receipt["details"]["key_shredded"] is True and receipt["details"]["objects_deleted"] == 1
    assert "no_longer_unwraps" in receipt["details"]["shred_proof"]


async def test_a_job_with_the_right_name_but_not_the_operators_is_not_adopted(harness: Harness, org_name: Any) -> None:
    name = org_name("jobname")
    ns = f"mesial-org-{name}"
    k8s = harness.client
    await organization_ready(k8s, name)
    await k8s.create(foreign_job("scanjob-case", ns))
    await k8s.patch(*JOB, "scanjob-case", {"status": {"succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True"}]}}, ns)  # fmt: skip
    await k8s.create(scanjob("case", ns))

    async def failed() -> dict[str, Any] | None:
        st = await sj_status(k8s, ns, "case")
        return st if st.get("phase") == "Failed" else None

    st = await eventually(failed)
    assert st["reason"] == "JobNameTaken" and "scanjob-case" in st["message"]
    # deleting the ScanJob leaves the other Job alone
    await k8s.delete(*SCANJOB, "case", ns)
    await eventually(lambda: _absent(k8s, SCANJOB, "case", ns))
    assert await k8s.get(*JOB, "scanjob-case", ns) is not None


async def test_a_hand_set_succeeded_does_not_let_deletion_pass_a_running_job(harness: Harness, org_name: Any) -> None:
    name = org_name("handset")
    ns = f"mesial-org-{name}"
    k8s = harness.client
    await organization_ready(k8s, name)
    await k8s.create(scanjob("case", ns))
    await eventually(lambda: k8s.get(*JOB, "scanjob-case", ns))
    await k8s.patch(*JOB, "scanjob-case", {"status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}, ns)
    await eventually(lambda: _phase(k8s, ns, "case", "Running"))
    await k8s.patch(*SCANJOB, "case", {"status": {"phase": "Succeeded"}}, ns, status=True)
    await asyncio.sleep(1.0)
    assert (await sj_status(k8s, ns, "case"))["phase"] == "Succeeded"
    await k8s.delete(*ORG, name)

    async def blocked() -> dict[str, Any] | None:
        deleting = condition(await status(k8s, name), "Deleting")
        return deleting if deleting.get("reason") == "DeletionBlocked" else None

    deleting = await eventually(blocked, timeout=40)
    assert "case" in deleting["message"]
    assert await k8s.get(*JOB, "scanjob-case", ns) is not None


async def _phase(k8s: Any, ns: str, name: str, phase: str) -> bool:
    return (await sj_status(k8s, ns, name)).get("phase") == phase


async def _gone(k8s: Any, name: str) -> bool:
    return await k8s.get(*ORG, name) is None


async def _absent(k8s: Any, kind: tuple[str, str], name: str, ns: str) -> bool:
    return await k8s.get(*kind, name, ns) is None


async def test_a_hand_set_tenant_does_not_read_another_tenants_progress(harness: Harness, org_name: Any) -> None:
    """Sibling of finding 4: status.tenant is a record; the tenant of a ScanJob is its namespace's."""
    from mesial.common.contract import JobProgress, write_progress

    mine, other = org_name("mine"), org_name("other")
    k8s = harness.client
    for name in (mine, other):
        await k8s.create(organization(name))
    await eventually(lambda: ready(k8s, mine))
    await eventually(lambda: ready(k8s, other))
    ns = f"mesial-org-{mine}"
    await write_progress(harness.runtime.store, other, "case", JobProgress(stage="secret", metrics={"leak": 1.0}))
    await k8s.create(scanjob("case", ns))
    await eventually(lambda: _phase(k8s, ns, "case", "Pending"))  # admitted: the operator's status is written
    await k8s.patch(*SCANJOB, "case", {"status": {"tenant": other}}, ns, status=True)
    await k8s.patch(*JOB, "scanjob-case", {"status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}}, ns)
    await eventually(lambda: _phase(k8s, ns, "case", "Running"))
    await asyncio.sleep(1.0)
    st = await sj_status(k8s, ns, "case")
    assert "leak" not in (st.get("metrics") or {}) and st.get("stage") != "secret", st
