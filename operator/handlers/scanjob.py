"""ScanJob handlers: dispatch a Job, mirror its state, report it to the API, stop it on deletion."""

from __future__ import annotations

from typing import Any

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.handlers import current
from mesial.operator.k8s import K8sError
from mesial.operator.reporting import ReportRefused
from mesial.operator.runtime import Runtime
from mesial.operator.sync.jobreport import report, unreported
from mesial.operator.sync.scanjob import (
    SCANJOB,
    TERMINAL,
    TenantNotReady,
    dispatch,
    mirror,
    stop,
    succeeded_in_world,
)

PLURAL = ("mesial.dev", "v1alpha1", "scanjobs")


async def _write(runtime: Runtime, body: kopf.Body, status: dict[str, Any]) -> None:
    meta = body["metadata"]
    await runtime.k8s.patch(*SCANJOB, meta["name"], {"status": status}, meta["namespace"], status=True)


async def scanjob_created(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    delay = runtime.settings.operator.retry_delay_s
    # admit (tenant namespace, spec) and create the Job, or refuse; a tenant not Ready yet: wait
    try:
        status = await dispatch(runtime, body)
    except TenantNotReady as exc:
        await _write(runtime, body, {"phase": "Pending", "reason": "TenantNotReady", "message": str(exc)})
        raise kopf.TemporaryError(str(exc), delay=delay) from exc
    except K8sError as exc:
        raise to_kopf(exc, delay) from exc
    # record the outcome (whatever status the object came with is replaced: it is no record of ours)
    stale = {key: None for key in body.get("status") or {} if key not in status and key != "kopf"}
    await _write(runtime, body, {**stale, **status})
    if status["phase"] == "Failed":
        kopf.event(body, type="Warning", reason=status["reason"], message=status["message"])
    else:
        kopf.event(body, type="Normal", reason="JobCreated", message=f"created Job {status['jobName']}")


async def scanjob_sync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # read Job, pod and progress object; write status only if it changed from the status as it is
    # (kopf's body may not hold the last tick's write yet, or a phase set since)
    scanjob = await current(runtime, SCANJOB, body)
    if scanjob is None:
        return
    try:
        status = await mirror(runtime, scanjob)
    except Exception as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    if status is not None:
        await _write(runtime, body, status)
        if status.get("phase") in TERMINAL:
            kind = "Normal" if status["phase"] == "Succeeded" else "Warning"
            kopf.event(body, type=kind, reason=status["phase"], message=status.get("message") or status["phase"])


async def scanjob_report(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if runtime.reporter is None:
        return
    # decided on the ScanJob as it is: kopf's body may not hold the last report's record yet
    found = await current(runtime, SCANJOB, body)
    if found is None:
        return
    body = found
    # a success is reported only when the world shows it (the Job, else the job's own last word)
    if (body.get("status") or {}).get("phase") == "Succeeded" and unreported(body, runtime.reporter.confirmed):
        try:
            verified = await succeeded_in_world(runtime, body)
        except Exception as exc:
            raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
        if not verified and (body.get("status") or {}).get("reportedPhase") == "Succeeded":
            # reported before this process started (its Job and progress may be gone by now): not
            # reported again unverified, and its status is left as it is
            runtime.reporter.confirmed[str(body["metadata"].get("uid"))] = "Succeeded"
            return
        if not verified:
            message = "Succeeded is not shown by the ScanJob's own Job or progress; status reset"
            kopf.event(body, type="Warning", reason="StatusNotVerified", message=message)
            await _write(runtime, body, {"phase": "Pending", "reason": "StatusNotVerified", "message": message})
            return
    # tell the API the new state; API down: retry (the phase stays unreported)
    try:
        reported = await report(runtime.reporter, body)
    except ReportRefused as exc:
        # the API will never take it (unknown job): record it as reported, say so
        kopf.event(body, type="Warning", reason="NotReported", message=str(exc))
        reported = {"reportedPhase": (body.get("status") or {}).get("phase")}
        if reported["reportedPhase"] in TERMINAL:
            runtime.reporter.confirmed[str(body["metadata"].get("uid"))] = reported["reportedPhase"]
    except Exception as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    if reported is not None:
        await _write(runtime, body, reported)


async def scanjob_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    try:
        await stop(runtime, body)
    except K8sError as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    if runtime.reporter is not None:
        runtime.reporter.confirmed.pop(str(body["metadata"].get("uid")), None)


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL and bool(status.get("jobName"))


def _unreported(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    runtime: Runtime = memo.runtime
    return runtime.reporter is not None and unreported(body, runtime.reporter.confirmed)


def register(registry: kopf.OperatorRegistry, interval: float, *, report_to_api: bool = False) -> None:
    kopf.on.create(*PLURAL, id="dispatch", registry=registry)(scanjob_created)
    kopf.timer(*PLURAL, id="mirror", registry=registry, interval=interval, when=_active)(scanjob_sync)
    if report_to_api:
        kopf.timer(*PLURAL, id="report", registry=registry, interval=interval, when=_unreported)(scanjob_report)
    kopf.on.delete(*PLURAL, id="stop", registry=registry)(scanjob_deleted)
