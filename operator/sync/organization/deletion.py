"""Deleting an Organization: resumable steps, each proven in the world, recorded in ``status.deletion``.

Order: refuse while ScanJobs run (unless ``spec.deletion.force``, read from the Organization as it
is, not kopf's copy: then they are stopped), wait until
no ScanJob is left and no pod of the tenant runs, delete the tenant's objects in the store (held ones too: the key is shredded next),
crypto-shred the key, remove the Vault role and the tenant's store identity,
delete the namespace, send the deletion receipt to the audit sink (on every pass until the sink takes it: the
collector acknowledges a receipt it holds already). ``status.deletion`` is a record for people, never a
proof: every pass asks the world whether each step is done (Jobs still active in the
tenant namespace, objects left under the tenant prefix, the key still in Vault, the
namespace still there and the operator's) and redoes what is not, so a hand-written
``keyShredded: true`` neither skips the shredding nor reaches the receipt, and a hand-written
``receiptWritten: true`` does not keep the receipt from being sent. Only a
namespace the operator created (``sync.tenancy``) is touched: someone else's namespace
of that name keeps its ScanJobs and is never deleted. A failing step (Vault or the
store down) raises; the finalizer stays; the ``Deleting`` condition says which step
waits and why.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from mesial.common.audit import AuditEvent
from mesial.common.errors import KeyNotFound, MesialError, StorageError, VaultError
from mesial.common.service_http import HttpRefused
from mesial.operator.errors import describe
from mesial.operator.k8s import K8sError
from mesial.operator.metrics import RECEIPTS
from mesial.operator.runtime import Runtime
from mesial.operator.sync.conditions import condition, merge_conditions, now_iso
from mesial.operator.sync.organization import ORG, Note
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.retention import holds_another_receipt
from mesial.operator.sync.scanjob import scanjob_running
from mesial.operator.sync.tenancy import owned_by

SCANJOB = ("mesial.dev/v1alpha1", "ScanJob")
# What the audit collector accepts as a detail's text (api/schemas.py DetailText).
_DETAIL_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.:/-]+")


class DeletionBlocked(MesialError):
    """Deletion waits: ScanJobs still run and the spec does not say force."""


class JobsStopping(MesialError):
    """Deletion waits: the ScanJobs were deleted, but one of them or a pod of the tenant is not gone yet."""


async def delete_organization(rt: Runtime, body: Any) -> list[Note]:
    """Run the steps on ``body``, the Organization as the API server has it, read under
    ``rt.org_lock`` after any reconcile pass still running (``handlers.organization``): its spec
    decides (a ``spec.deletion.force`` set after the deletion was asked counts at once), its status
    is where the steps resume. kopf's own copy can lag behind both."""
    org = OrgView.from_body(body)
    status = dict(body.get("status") or {})
    progress: dict[str, Any] = dict(status.get("deletion") or {})
    notes: list[Note] = []

    async def record(ok: bool | None, reason: str, message: str, **done: Any) -> None:
        progress.update(done)
        conditions = merge_conditions(status.get("conditions"), [condition("Deleting", ok, reason, message)])
        status["conditions"] = conditions
        patch = {"status": {"phase": "Terminating", "deletion": dict(progress), "conditions": conditions}}
        await rt.k8s.patch(*ORG, org.name, patch, status=True)

    async def step(name: str, action: Any) -> Any:
        try:
            result = await action()
        except (MesialError, K8sError) as exc:
            await record(False, type(exc).__name__, f"waiting at step {name}: {describe(exc)}")
            raise
        notes.append(Note("Normal", "Deleting", f"step {name} done"))
        return result

    if not progress.get("startedAt"):
        await record(None, "Started", "deletion started", startedAt=now_iso())

    namespace = await rt.k8s.get("v1", "Namespace", org.namespace)
    ours = owned_by(namespace, org.uid)

    async def stop_scanjobs() -> None:
        if not ours:
            await record(None, "InProgress", "no tenant namespace of the operator's: no ScanJobs to stop")
            return
        scanjobs = await rt.k8s.list(*SCANJOB, namespace=org.namespace)
        active = [sj["metadata"]["name"] for sj in scanjobs if await scanjob_running(rt.k8s, sj)]
        if active and not org.force_delete:
            names = ", ".join(sorted(active)[:5])
            raise DeletionBlocked(
                f"{len(active)} ScanJob(s) still running ({names}); wait, or set spec.deletion.force=true"
            )
        for sj in scanjobs:
            await rt.k8s.delete(*SCANJOB, sj["metadata"]["name"], org.namespace)
        # Stopped means gone, proven in the world: no ScanJob left (each one's handler stopped its own
        # Job) and no pod of the tenant still running (a pod being deleted runs until its processes
        # end). Only then are the store emptied and the key shredded: a running job could still write
        # under the prefix, or hold the key when it goes.
        left = sorted(sj["metadata"]["name"] for sj in await rt.k8s.list(*SCANJOB, namespace=org.namespace))
        pods = sorted(
            pod["metadata"]["name"]
            for pod in await rt.k8s.list("v1", "Pod", namespace=org.namespace)
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        if left or pods:
            raise JobsStopping(
                f"waiting for {len(left)} ScanJob(s) ({', '.join(left[:5])}) and {len(pods)} running pod(s) "
                f"({', '.join(pods[:5])}) to stop"
            )
        await record(None, "InProgress", "ScanJobs stopped, no pod running", scanJobsStopped=True)

    async def clear_store() -> None:
        report = await rt.store.delete_prefix(org.name, include_held=True)
        deleted = int(progress.get("objectsDeleted", 0)) + report.deleted  # a rerun after a crash adds up
        progress["objectsDeleted"] = deleted
        left = [meta.key async for meta in rt.store.list(org.name)]
        if left:
            raise StorageError(f"{len(left)} object(s) still under the tenant prefix after deleting it")
        await record(None, "InProgress", f"{deleted} object(s) deleted", storeCleared=True, objectsDeleted=deleted)

    async def shred_key() -> None:
        if await asyncio.to_thread(_key_exists, rt, org.name):
            receipt = await asyncio.to_thread(rt.provisioner.shred, org.name)
            progress["keyVersionsDestroyed"] = receipt.versions_destroyed
            progress["shredProof"] = receipt.proof
            if await asyncio.to_thread(_key_exists, rt, org.name):
                raise VaultError(f"key {org.key_name} is still in Vault after shredding it")
        await record(None, "InProgress", "key crypto-shredded", keyShredded=True)

    async def revoke_vault() -> None:
        await asyncio.to_thread(rt.provisioner.revoke_access, org.name)
        await record(None, "InProgress", "Vault role removed", vaultCleared=True)

    async def remove_store_identity() -> None:
        if rt.identities is not None:
            await asyncio.to_thread(rt.identities.remove, org.name)
            if await asyncio.to_thread(rt.identities.exists, org.name):  # proven from the store, not assumed
                raise StorageError(f"store identity of {org.name} still exists after its removal")
        await record(None, "InProgress", "store identity removed", storeIdentityRemoved=True)

    async def delete_namespace() -> None:
        if namespace is None:
            await record(None, "InProgress", "namespace gone", namespaceDeleted=True)
        elif ours:
            await rt.k8s.delete("v1", "Namespace", org.namespace)
            await record(None, "InProgress", "namespace deleted", namespaceDeleted=True)
        else:
            notes.append(Note("Warning", "NamespaceNotOwned", f"namespace {org.namespace} is not the operator's: left"))
            await record(None, "InProgress", "namespace not the operator's: left untouched", namespaceLeft=True)

    async def write_receipt() -> None:
        # Sent on every pass until the collector confirms it (201, or 200: it holds this receipt
        # already, after a lost answer); ``receiptWritten`` is a record for people, never a reason not
        # to send. The details are made from what the steps above left, so a pass that sends again
        # sends the same receipt (a different one is refused, 409).
        event = AuditEvent(
            tenant=org.name,
            actor="service:operator",
            action="organization.deleted",
            resource_type="organization",
            resource_id=org.uid or org.name,
            details={
                "objects_deleted": int(progress.get("objectsDeleted", 0)),
                "key": org.key_name,
                "key_shredded": not await asyncio.to_thread(_key_exists, rt, org.name),
                "shred_proof": detail_text(progress.get("shredProof", "")),
                "namespace": org.namespace,
                "store_identity_removed": bool(progress.get("storeIdentityRemoved")),
                "namespace_deleted": bool(progress.get("namespaceDeleted")),
                "started_at": str(progress.get("startedAt", "")),
            },
        )
        try:
            await rt.audit.append(event)
        except HttpRefused as exc:
            if not holds_another_receipt(exc):
                # any other refusal (the key not yet gone in the API's Vault, the API busy) may pass later
                RECEIPTS.labels("organization", "failed").inc()
                raise
            # the chain holds a different receipt for this organization: one is there, and sending
            # this one again cannot change that; said loudly, not retried forever
            RECEIPTS.labels("organization", "conflict").inc()
            notes.append(
                Note("Warning", "ReceiptConflict", f"the audit chain holds a different receipt: {exc.detail[:200]}")
            )
            await record(
                True,
                "Done",
                "the audit chain holds a different deletion receipt; releasing the finalizer",
                receiptWritten=True,
            )
            return
        except MesialError:
            RECEIPTS.labels("organization", "failed").inc()
            raise
        RECEIPTS.labels("organization", "sent").inc()
        await record(
            True, "Done", "deletion receipt confirmed by the audit sink; releasing the finalizer", receiptWritten=True
        )

    # every step checks the world and is idempotent: none is skipped on the word of the status
    await step("scanjobs", stop_scanjobs)
    await step("store", clear_store)
    await step("shred", shred_key)
    await step("vault", revoke_vault)
    await step("store identity", remove_store_identity)
    await step("namespace", delete_namespace)
    await step("receipt", write_receipt)  # the collector keeps one per organization: sent again, it says 200
    return notes


def _key_exists(rt: Runtime, org: str) -> bool:
    try:
        rt.provisioner.keys.key_info(org)
    except KeyNotFound:
        return False
    return True


def detail_text(value: object) -> str:
    """A receipt detail as the collector takes it: safe characters (runs of others become ``_``), 128 at most."""
    return _DETAIL_UNSAFE_RE.sub("_", str(value))[:128]
