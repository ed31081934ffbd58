"""ScanJob handlers: dispatch a Job, mirror its state, stop it on deletion."""

from __future__ import annotations

from typing import Any

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.k8s import K8sError
from mesial.operator.runtime import Runtime
from mesial.operator.sync.scanjob import SCANJOB, TERMINAL, dispatch, mirror, stop

PLURAL = ("mesial.dev", "v1alpha1", "scanjobs")


async def _write(runtime: Runtime, body: kopf.Body, status: dict[str, Any]) -> None:
    meta = body["metadata"]
    await runtime.k8s.patch(*SCANJOB, meta["name"], {"status": status}, meta["namespace"], status=True)


async def scanjob_created(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # admit (tenant namespace, spec) and create the Job, or refuse
    try:
        status = await dispatch(runtime, body)
    except K8sError as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    # record the outcome; a refusal is an Event too
    await _write(runtime, body, status)
    if status["phase"] == "Failed":
        kopf.event(body, type="Warning", reason=status["reason"], message=status["message"])
    else:
        kopf.event(body, type="Normal", reason="JobCreated", message=f"created Job {status['jobName']}")


async def scanjob_sync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # read Job, pod and progress object; write status only if it changed
    try:
        status = await mirror(runtime, body)
    except Exception as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    if status is not None:
        await _write(runtime, body, status)
        if status.get("phase") in TERMINAL:
            kind = "Normal" if status["phase"] == "Succeeded" else "Warning"
            kopf.event(body, type=kind, reason=status["phase"], message=status.get("message") or status["phase"])


async def scanjob_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    try:
        await stop(runtime, body)
    except K8sError as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL and bool(status.get("jobName"))


def register(registry: kopf.OperatorRegistry, interval: float) -> None:
    kopf.on.create(*PLURAL, id="dispatch", registry=registry)(scanjob_created)
    kopf.timer(*PLURAL, id="mirror", registry=registry, interval=interval, when=_active)(scanjob_sync)
    kopf.on.delete(*PLURAL, id="stop", registry=registry)(scanjob_deleted)
