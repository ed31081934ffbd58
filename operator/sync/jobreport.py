"""Reporting ScanJob states to the API (cluster mode): what to report next, and reporting it.

A ScanJob the API created carries the API's job id in its label ``mesial.dev/job-id``
(``api/executor.py`` ``scanjob_manifest``); one made by hand has none and is never
reported. What was reported is kept in the ScanJob's status (``reportedPhase``,
``reportedProgress``): a phase is reported until the API has taken it, and a terminal
one exactly until then. ``Running`` is reported again when the progress moves (the
API copies the job's progress document then). A job that ended before a ``Running``
was reported but had started reports ``running`` first, so the API's chain says
``job.started`` before ``job.succeeded``/``job.failed``. The API tolerates repeats
(a report whose answer was lost is sent again).

A terminal ``reportedPhase`` is a record, not a proof (anyone able to write ScanJob status can
set it): only the API's own answer to this process (:attr:`JobReporter.confirmed`, by
ScanJob uid) ends the reports, so after a restart each finished ScanJob is reported once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesial.operator.reporting import MAX_MESSAGE, JobReporter, State
from mesial.operator.sync.scanjob import TERMINAL, api_job_id, recorded_tenant

STATES: dict[str, State] = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}


def unreported(body: Any, confirmed: Mapping[str, str]) -> bool:
    """Whether the ScanJob's state has something the API was not told yet (``confirmed``: the
    terminal phase the API answered this process, by ScanJob uid)."""
    status = body.get("status") or {}
    if api_job_id(body) is None or recorded_tenant(body) is None:
        return False  # made by hand, or in no tenant's namespace: nobody's job to report
    phase, reported = status.get("phase"), status.get("reportedPhase")
    if phase not in STATES:
        return False
    if phase in TERMINAL:
        return bool(confirmed.get(str(body["metadata"].get("uid"))) != phase)
    if reported in TERMINAL:
        return False
    if phase != reported:
        return True
    return phase == "Running" and status.get("progress") != status.get("reportedProgress")


async def report(reporter: JobReporter, body: Any) -> dict[str, Any] | None:
    """Tell the API the ScanJob's state; the status fields recording it (None: nothing to report)."""
    if not unreported(body, reporter.confirmed):
        return None
    job_id = api_job_id(body)
    assert job_id is not None
    status = body.get("status") or {}
    phase = status["phase"]
    tenant = recorded_tenant(body)
    assert tenant is not None
    if phase in TERMINAL and status.get("reportedPhase") is None and status.get("startTime"):
        await reporter.report(job_id, tenant, "running")
    message = ""
    if phase == "Failed":
        reason, text = status.get("reason") or "", status.get("message") or ""
        message = f"{reason}: {text}" if reason and text else reason or text
    await reporter.report(job_id, tenant, STATES[phase], message[:MAX_MESSAGE])
    if phase in TERMINAL:
        reporter.confirmed[str(body["metadata"].get("uid"))] = phase
    recorded: dict[str, Any] = {"reportedPhase": phase}
    if "progress" in status:
        recorded["reportedProgress"] = status["progress"]
    return recorded
