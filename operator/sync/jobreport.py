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
"""

from __future__ import annotations

from typing import Any

from mesial.operator.reporting import MAX_MESSAGE, JobReporter, State
from mesial.operator.sync.scanjob import TERMINAL, api_job_id, recorded_tenant

STATES: dict[str, State] = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}


def unreported(body: Any) -> bool:
    """Whether the ScanJob's state has something the API was not told yet."""
    status = body.get("status") or {}
    if api_job_id(body) is None or recorded_tenant(body) is None:
        return False  # made by hand, or in no tenant's namespace: nobody's job to report
    phase, reported = status.get("phase"), status.get("reportedPhase")
    if phase not in STATES or reported in TERMINAL:
        return False
    if phase != reported:
        return True
    return phase == "Running" and status.get("progress") != status.get("reportedProgress")


async def report(reporter: JobReporter, body: Any) -> dict[str, Any] | None:
    """Tell the API the ScanJob's state; the status fields recording it (None: nothing to report)."""
    if not unreported(body):
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
    recorded: dict[str, Any] = {"reportedPhase": phase}
    if "progress" in status:
        recorded["reportedProgress"] = status["progress"]
    return recorded
