"""Reconciling an Organization: a list of sync steps, then one status write.

Like Capsule's tenant controller, each owned kind has its own module and the
orchestrator runs them in order, collecting failures as ``cannot sync <step>: ...``
instead of stopping at the first (a broken Vault must not keep the NetworkPolicies
from being restored). The status is computed from what happened and written once, at
the end, only if it changed. Every change and every failure becomes a note, which the
handler posts as a Kubernetes Event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mesial.common.errors import MesialError
from mesial.common.provisioning import VaultTenant
from mesial.common.settings import OperatorSettings
from mesial.operator.errors import describe
from mesial.operator.k8s import Applied, Change, K8s, K8sError
from mesial.operator.runtime import Runtime
from mesial.operator.sync.conditions import condition, merge_conditions, same_status
from mesial.operator.sync.organization.access import sync_access
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.organization.namespaces import sync_namespace
from mesial.operator.sync.organization.networkpolicies import sync_networkpolicies
from mesial.operator.sync.organization.quotas import sync_quotas
from mesial.operator.sync.organization.rbac import sync_rbac
from mesial.operator.sync.organization.store import sync_store_secret
from mesial.operator.sync.organization.trust import sync_trust
from mesial.operator.sync.organization.vault import sync_vault
from mesial.operator.sync.tenancy import NamespaceNotOwned

ORG = ("mesial.dev/v1alpha1", "Organization")
Step = Callable[[K8s, OrgView, OperatorSettings], Awaitable[list[Applied]]]
K8S_STEPS: list[tuple[str, Step]] = [
    ("namespace", sync_namespace),
    ("access", sync_access),
    ("rbac", sync_rbac),
    ("quotas", sync_quotas),
    ("network", sync_networkpolicies),
]


@dataclass(frozen=True)
class Note:
    """An Event to post: type (Normal/Warning), reason, message."""

    type: str
    reason: str
    message: str


@dataclass
class Report:
    mode: str
    notes: list[Note] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)
    vault: VaultTenant | None = None
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> BaseException | None:
        return next(iter(self.errors.values()), None)

    def applied(self, applied: Applied) -> None:
        if applied.change is Change.unchanged:
            return
        if self.mode == "drift":
            verb = "recreated" if applied.change is Change.created else "restored"
            message = f"{applied.ref} {applied.what}; {verb}"
            self.notes.append(Note("Warning", "DriftCorrected", message))
        else:
            reason = "Created" if applied.change is Change.created else "Updated"
            self.notes.append(
                Note(
                    "Normal",
                    reason,
                    f"{reason} {applied.ref}"
                    + (f" ({applied.what})" if applied.what and applied.change is Change.updated else ""),
                )
            )

    def failed(self, step: str, exc: BaseException) -> None:
        self.errors[step] = exc
        self.notes.append(Note("Warning", "SyncFailed", f"cannot sync {step}: {describe(exc)}"))


async def reconcile(rt: Runtime, live: Any, *, mode: str) -> Report:
    """Create or correct everything an Organization owns; write its status; report.

    ``live`` is the Organization as the API server has it, read by the caller under the lock its
    deletion takes too (handlers.organization: kopf's body, the last one its watch delivered, can
    lag). So a pass never recreates what a deletion removes (one being deleted is left to the
    deletion handler), never writes its status over a newer one, and applies the spec as it is: a
    drift tick on a lagging copy put the older spec's quota back over the newer one's."""
    if live["metadata"].get("deletionTimestamp"):
        return Report("deleting")  # the deletion handler owns it now: recreate nothing
    return await _reconcile(rt, OrgView.from_body(live), live, mode)


async def _reconcile(rt: Runtime, org: OrgView, live: Any, mode: str) -> Report:
    settings = rt.settings.operator
    old = dict(live.get("status") or {})
    report = Report(classify(mode, old, org.generation))
    for step, sync in K8S_STEPS:
        if step != "namespace" and "namespace" in report.errors:
            break
        try:
            for applied in await sync(rt.k8s, org, settings):
                report.applied(applied)
        except (MesialError, K8sError) as exc:
            report.failed(step, exc)
    if "namespace" not in report.errors:
        try:
            for applied in await sync_store_secret(rt.k8s, org, rt.settings, rt.identities):
                report.applied(applied)
        except (MesialError, K8sError) as exc:
            report.failed("store", exc)
        try:
            for applied in await sync_trust(rt.k8s, org, rt.settings):
                report.applied(applied)
        except (MesialError, K8sError) as exc:
            report.failed("trust", exc)
    if isinstance(report.errors.get("namespace"), NamespaceNotOwned):
        # someone else's namespace of that name: the tenant's Vault role must not point at it
        report.notes.append(Note("Warning", NamespaceNotOwned.reason, describe(report.errors["namespace"])))
        try:
            await asyncio.to_thread(rt.provisioner.revoke_access, org.name)
        except MesialError as exc:
            report.failed("vault", exc)
    elif "namespace" in report.errors:
        pass  # the Vault role is bound only to a namespace known to be the operator's
    else:
        await _sync_vault(rt, org, report)
    report.status = build_status(org, old, report)
    if not same_status(old, report.status):
        await rt.k8s.patch(*ORG, org.name, {"status": report.status}, status=True)
    return report


async def _sync_vault(rt: Runtime, org: OrgView, report: Report) -> None:
    settings = rt.settings.operator
    try:
        report.vault = await sync_vault(rt.provisioner, org, settings)
        for text in report.vault.corrected:
            if report.mode == "drift":
                report.notes.append(Note("Warning", "DriftCorrected", f"{text}; restored"))
            else:
                report.notes.append(Note("Normal", "VaultProvisioned", text.replace("was missing", "created")))
    except MesialError as exc:
        report.failed("vault", exc)


def classify(hint: str, old: dict[str, Any], generation: int | None) -> str:
    """What a pass is: a creation, a spec change applied, or drift (a change nobody asked for)."""
    if not old.get("phase"):
        return "create"
    if generation is not None and old.get("observedGeneration") != generation:
        return "update"
    return "drift" if hint != "update" or generation is not None else hint


def build_status(org: OrgView, old: dict[str, Any], report: Report) -> dict[str, Any]:
    errors = report.errors

    def outcome(*steps: str) -> tuple[bool | None, str, str]:
        for step in steps:
            if step in errors:
                return False, type(errors[step]).__name__, f"cannot sync {step}: {describe(errors[step])}"
        if "namespace" in errors and "namespace" not in steps:
            return None, "WaitingForNamespace", "the tenant namespace is not there yet"
        return True, "Synced", ""

    ns_ok, ns_reason, ns_message = outcome("namespace", "access", "rbac", "quotas", "store", "trust")
    net_ok, net_reason, net_message = outcome("network")
    vault_ok, vault_reason, vault_message = outcome("vault")
    ready = not errors
    first = next(iter(errors), None)
    conditions = [
        condition("Ready", ready, "Ready" if ready else "NotReady", "" if ready else f"{first} failed; retrying"),
        condition("NamespaceReady", ns_ok, ns_reason, ns_message),
        condition("NetworkReady", net_ok, net_reason, net_message),
        condition("VaultReady", vault_ok, vault_reason, vault_message),
    ]
    was_ready = old.get("phase") in ("Ready", "Degraded")
    status: dict[str, Any] = {
        "phase": "Ready" if ready else ("Degraded" if was_ready else "Provisioning"),
        "namespace": org.namespace,
        "keyName": org.key_name,
        "conditions": merge_conditions(old.get("conditions"), conditions),
    }
    if report.vault is not None:
        status["keyVersion"] = report.vault.key.latest_version
        status["keyFingerprint"] = report.vault.key.fingerprint
    if org.generation is not None:
        status["observedGeneration"] = org.generation
    return status
