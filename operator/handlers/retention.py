"""RetentionPolicy handlers: admit one per tenant namespace; sweep on a timer when due."""

from __future__ import annotations

from typing import Any

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.runtime import Runtime
from mesial.operator.sync.retention import POLICY, admit, sweep, sweep_due

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
    if (body.get("status") or {}).get("phase") != "Active":
        await policy_admitted(body=body, memo=memo)  # a rival deleted, a namespace fixed: admit again
        return
    if not sweep_due(body, now):
        return
    # re-admit (the namespace or a rival may have changed), then sweep
    tenant, admission = await admit(runtime.k8s, body, runtime.settings)
    if tenant is None:
        await _write(runtime, body, admission)
        kopf.event(body, type="Warning", reason=admission["reason"], message=admission["message"])
        return
    try:
        status = await sweep(runtime, body, tenant, now)
    except Exception as exc:
        kopf.event(body, type="Warning", reason="SweepFailed", message=str(exc)[:400])
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    await _write(runtime, body, status)
    counts = status["lastSweep"]
    kopf.event(
        body,
        type="Normal" if counts["errors"] == 0 else "Warning",
        reason="Swept",
        message=f"examined {counts['examined']}, deleted {counts['deleted']}, held {counts['held']}, "
        f"kept {counts['kept']}, errors {counts['errors']}, scanjobs deleted {counts['scanJobsDeleted']}",
    )


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    kopf.on.create(*PLURAL, id="admit", registry=registry)(policy_admitted)
    kopf.on.resume(*PLURAL, id="admit", registry=registry)(policy_admitted)
    kopf.timer(*PLURAL, id="sweep", registry=registry, interval=tick)(policy_sweep)
