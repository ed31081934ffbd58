"""RetentionPolicy handlers: admit one per tenant namespace; sweep on a timer when due."""

from __future__ import annotations

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


async def policy_sweep(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    now = runtime.now()
    # decided on the policy as it is, not on kopf's body: that may not hold the last tick's status yet
    policy = await current(runtime, POLICY, body)
    if policy is None:
        return
    if (policy.get("status") or {}).get("phase") != "Active":
        await policy_admitted(body=policy, memo=memo)  # a rival deleted, a namespace fixed: admit again
        return
    if not sweep_due(policy, now):
        await resend(runtime, policy)  # receipts still owed go out on every tick
        return
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
    # the receipts it still owes go first: deleting the policy must not lose them (those the
    # last tick wrote too, which kopf's body may not hold yet)
    body = await current(runtime, POLICY, body) or body
    pending = pending_receipts(body.get("status") or {})
    if not pending:
        return
    tenant, admission = await admit(runtime.k8s, body, runtime.settings)
    if tenant is None:
        message = f"{len(pending)} receipt(s) owed, the tenant is gone ({admission['reason']}): not sent"
        kopf.event(body, type="Warning", reason="ReceiptsUnsent", message=message)
        return
    await settle_intents(runtime, body, tenant, pending)
    delivery = await deliver(runtime, tenant, pending)
    await _write(runtime, body, {"pendingReceipts": pending})
    report_delivery(body, delivery)
    if pending:
        raise kopf.TemporaryError(
            f"{len(pending)} receipt(s) still owed", delay=runtime.settings.operator.retry_delay_s
        )


def report_delivery(body: kopf.Body, delivery: Delivery) -> None:
    """A Warning Event per receipt the chain refused (409) and for a round that stopped on a failure."""
    for subject in delivery.conflicts:
        kopf.event(
            body,
            type="Warning",
            reason="ReceiptConflict",
            message=f"the audit chain holds a different retention receipt for {subject}: not sent again",
        )
    if delivery.failure:
        kopf.event(body, type="Warning", reason="ReceiptPending", message=delivery.failure[:400])


def _owes(body: kopf.Body, **_: Any) -> bool:
    return bool(pending_receipts(body.get("status") or {}))


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    kopf.on.create(*PLURAL, id="admit", registry=registry)(policy_admitted)
    kopf.on.resume(*PLURAL, id="admit", registry=registry)(policy_admitted)
    kopf.timer(*PLURAL, id="sweep", registry=registry, interval=tick)(policy_sweep)
    # run on deletion only while receipts are owed; kopf's finalizer holds the policy until it succeeds
    kopf.on.delete(*PLURAL, id="receipts", registry=registry, when=_owes)(policy_deleted)
