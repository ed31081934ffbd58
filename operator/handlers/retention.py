"""RetentionPolicy handlers: admit one per tenant namespace; sweep on a timer when due."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.handlers import current
from mesial.operator.runtime import Runtime
from mesial.operator.sync.retention import (
    POLICY,
    Delivery,
    admit,
    deliver,
    pending_receipts,
    settle_intents,
    sweep,
    sweep_due,
)

PLURAL = ("mesial.dev", "v1alpha1", "retentionpolicies")


async def _write(runtime: Runtime, body: kopf.Body, status: dict[str, Any]) -> None:
    meta = body["metadata"]
    await runtime.k8s.patch(*POLICY, meta["name"], {"status": status}, meta["namespace"], status=True)


async def policy_admitted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # one policy per tenant namespace: accept or reject with a reason
    tenant, status = await admit(runtime.k8s, body, runtime.settings)
    old = body.get("status") or {}
    if (old.get("phase"), old.get("reason")) != (status["phase"], status["reason"]):
        await _write(runtime, body, status)
        kind = "Normal" if tenant else "Warning"
        kopf.event(body, type=kind, reason=status["reason"], message=status["message"] or "policy accepted")


def _lock(runtime: Runtime, body: kopf.Body) -> asyncio.Lock:
    """One policy's tick and its deletion handler run one at a time: kopf runs the deletion handler
    while a tick is still running, and that handler must see every intent and receipt the tick
    writes (settled from a store the sweep is still changing, then written over the sweep's own
    status, a receipt owed was lost)."""
    meta = body["metadata"]
    return runtime.lock("retentionpolicy", meta["namespace"], meta["name"])


async def policy_sweep(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    async with _lock(runtime, body):
        await _tick(runtime, body, memo)


async def _tick(runtime: Runtime, body: kopf.Body, memo: kopf.Memo) -> None:
    now = runtime.now()
    # decided on the policy as it is, not on kopf's body: that may not hold the last tick's status yet
    policy = await current(runtime, POLICY, body)
    if policy is None:
        return
    if policy["metadata"].get("deletionTimestamp"):
        return  # being deleted (kopf's copy may not show it yet): its deletion handler sends what is owed
    if (policy.get("status") or {}).get("phase") != "Active":
        await policy_admitted(body=policy, memo=memo)  # a rival deleted, a namespace fixed: admit again
        return
    if not sweep_due(policy, now):
        await resend(runtime, policy)  # receipts still owed go out on every tick
        return
    if runtime.settings.operator.finalizer not in (policy["metadata"].get("finalizers") or []):
        return  # no intent is written before kopf's finalizer holds the policy (it puts it back on its next event)
    # re-admit (the namespace or a rival may have changed), then sweep
    tenant, admission = await admit(runtime.k8s, policy, runtime.settings)
    if tenant is None:
        await _write(runtime, policy, admission)
        kopf.event(policy, type="Warning", reason=admission["reason"], message=admission["message"])
        return
    try:
        status, delivery = await sweep(runtime, policy, tenant, now, lambda fields: _write(runtime, policy, fields))
    except Exception as exc:
        kopf.event(policy, type="Warning", reason="SweepFailed", message=str(exc)[:400])
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    await _write(runtime, policy, status)
    report_delivery(policy, delivery)
    counts = status["lastSweep"]
    kopf.event(
        policy,
        type="Normal" if counts["errors"] == 0 else "Warning",
        reason="Swept",
        message=f"examined {counts['examined']}, deleted {counts['deleted']}, held {counts['held']}, "
        f"kept {counts['kept']}, errors {counts['errors']}, scanjobs deleted {counts['scanJobsDeleted']}",
    )


async def resend(runtime: Runtime, body: kopf.Body) -> None:
    """Send the receipts ``status.pendingReceipts`` still holds; write what is left."""
    pending = pending_receipts(body.get("status") or {})
    if not any("details" in entry for entry in pending):
        return
    tenant, _ = await admit(runtime.k8s, body, runtime.settings)
    if tenant is None:
        return
    delivery = await deliver(runtime, tenant, pending)
    await _write(runtime, body, {"pendingReceipts": pending})
    report_delivery(body, delivery)


async def policy_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # run on every deletion, after any tick still running (the lock), and decided on the policy as
    # it is: kopf's copy may not show the receipts owed that the last tick wrote
    async with _lock(runtime, body):
        await _send_owed(runtime, body)


async def _send_owed(runtime: Runtime, body: kopf.Body) -> None:
    """The receipts the policy being deleted still owes go first: deleting it must not lose them."""
    policy = await current(runtime, POLICY, body)
    if policy is None:
        # gone: its finalizer was removed by others; nothing is left to hold or to write to
        owed = pending_receipts(body.get("status") or {})
        if owed:
            message = f"the policy is gone (its finalizer removed by others): {len(owed)} receipt(s) owed not sent"
            kopf.event(body, type="Warning", reason="ReceiptsUnsent", message=message)
        return
    pending = pending_receipts(policy.get("status") or {})
    if not pending:
        return
    tenant, admission = await admit(runtime.k8s, policy, runtime.settings)
    if tenant is None:
        message = f"{len(pending)} receipt(s) owed, the tenant is gone ({admission['reason']}): not sent"
        kopf.event(policy, type="Warning", reason="ReceiptsUnsent", message=message)
        return
    await settle_intents(runtime, policy, tenant, pending)
    delivery = await deliver(runtime, tenant, pending)
    await _write(runtime, policy, {"pendingReceipts": pending})
    report_delivery(policy, delivery)
    if pending:
        raise kopf.TemporaryError(
            f"{len(pending)} receipt(s) still owed", delay=runtime.settings.operator.retry_delay_s
        )


def report_delivery(body: kopf.Body, delivery: Delivery) -> None:
    """A Warning Event per receipt the API refused for good (dropped: ``ReceiptConflict`` for a 409,
    the chain holds a different one; ``ReceiptRefused`` for a 400, 404 or 422) and for a round that
    stopped on a failure (``ReceiptPending``: kept)."""
    for subject in delivery.conflicts:
        kopf.event(
            body,
            type="Warning",
            reason="ReceiptConflict",
            message=f"the audit chain holds a different retention receipt for {subject}: not sent again",
        )
    for message in delivery.refused:
        kopf.event(body, type="Warning", reason="ReceiptRefused", message=message[:400])
    if delivery.failure:
        kopf.event(body, type="Warning", reason="ReceiptPending", message=delivery.failure[:400])


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    kopf.on.create(*PLURAL, id="admit", registry=registry)(policy_admitted)
    kopf.on.resume(*PLURAL, id="admit", registry=registry)(policy_admitted)
    # The sweep timer has kopf put its finalizer on every policy when it first handles it; a tick
    # sweeps only once it is on. kopf keeps it until the deletion handler has succeeded and no tick
    # runs. The deletion handler runs on every deletion (not only when kopf's
    # copy shows receipts owed: that copy can lag behind the last tick) and decides on a GET.
    kopf.timer(*PLURAL, id="sweep", registry=registry, interval=tick)(policy_sweep)
    kopf.on.delete(*PLURAL, id="receipts", registry=registry)(policy_deleted)
