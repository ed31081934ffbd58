"""How an aligner Job reports progress: an encrypted object under its tenant's prefix.

A tenant pod may not patch its ScanJob's status (its ServiceAccount has no such right,
on purpose). Instead the Job writes ``jobs/<job-id>/progress.json`` through the
:class:`~mesial.common.objectstore.ObjectStore` (sealed with the tenant key, like
everything else of that tenant), and the operator reads it and mirrors it into the
ScanJob's status. The document is untrusted input: :func:`parse_progress` checks every
field, bounds every size and strips anything that is not a plain short text, so that
a hostile or broken job cannot inject markup, control characters or megabytes into
the status that platform engineers read.

Document (JSON object)::

    {"stage": "registration", "percent": 40, "message": "ICP converged",
     "metrics": {"rmse_mm": 0.08}, "artifacts": ["results/<job-id>/report.json"]}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mesial.common.errors import InputError, InvalidObjectKey, ObjectNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.tenancy import validate_relative_key

MAX_DOCUMENT_BYTES = 16 * 1024
MAX_METRICS = 32
MAX_ARTIFACTS = 32
MAX_TEXT = 256
# What an alignment can conclude (result.json `status`).
RESULTS = ("ok", "not_confident", "invalid_input")
# Exit codes of a job (`mesial job run`): 0 the alignment ran (its verdict is `result_status`,
# confident or not), 2 invalid input (final: no retry can fix the scans), 1 the job itself
# failed (may be transient, retried).
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
# The contact threshold a job accepts (mm): the API, the ScanJob CRD and `mesial job run` agree.
CONTACT_THRESHOLD_MM = (0.01, 2.0)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_SAFE_TEXT_RE = re.compile(r"[^\w .,:;=+\-()/%#@'\[\]]", re.UNICODE)


def progress_key(job_id: str) -> str:
    """The object key (below the tenant prefix) of a job's progress document."""
    return validate_relative_key(f"jobs/{job_id}/progress.json")


def sanitize_text(text: object, limit: int = MAX_TEXT) -> str:
    """A single short line of safe characters (anything else becomes '?')."""
    value = " ".join(str(text).split())
    return _SAFE_TEXT_RE.sub("?", value)[:limit]


@dataclass(frozen=True)
class JobProgress:
    stage: str = ""
    percent: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    result: str = ""  # the alignment's verdict once known: one of RESULTS

    def as_document(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "percent": self.percent,
            "result_status": self.result,
            "message": self.message,
            "metrics": dict(self.metrics),
            "artifacts": list(self.artifacts),
        }


def parse_progress(raw: bytes) -> JobProgress:
    """Validate and sanitize a progress document; ``InputError`` if it is not one."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InputError(f"progress document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("progress document is not JSON") from exc
    if not isinstance(doc, dict):
        raise InputError("progress document is not a JSON object")
    percent = doc.get("percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent):
        raise InputError("progress percent is not a number")
    metrics: dict[str, float] = {}
    raw_metrics = doc.get("metrics", {})
    if not isinstance(raw_metrics, dict):
        raise InputError("progress metrics is not an object")
    for name, value in list(raw_metrics.items())[:MAX_METRICS]:
        if (
            isinstance(name, str)
            and _NAME_RE.fullmatch(name)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            metrics[name] = float(value)
    artifacts: list[str] = []
    raw_artifacts = doc.get("artifacts", [])
    if not isinstance(raw_artifacts, list):
        raise InputError("progress artifacts is not a list")
    for item in raw_artifacts[:MAX_ARTIFACTS]:
        if isinstance(item, str):
            try:
                artifacts.append(validate_relative_key(item))
            except InvalidObjectKey:
                continue  # an artifact outside the tenant's keys is dropped, the rest kept
    return JobProgress(
        stage=sanitize_text(doc.get("stage", ""), 64),
        percent=max(0, min(100, int(percent))),
        message=sanitize_text(doc.get("message", "")),
        metrics=metrics,
        artifacts=artifacts,
        result=result if isinstance(result := doc.get("result_status"), str) and result in RESULTS else "",
    )


async def write_progress(store: ObjectStore, org: str, job_id: str, progress: JobProgress) -> None:
    """What the Job entrypoint calls after each stage."""
    await store.put(org, progress_key(job_id), json.dumps(progress.as_document()).encode())


async def read_progress(store: ObjectStore, org: str, job_id: str) -> JobProgress | None:
    """The job's latest progress, or None if it has not reported yet."""
    try:
        raw = await store.read_bytes(org, progress_key(job_id))
    except ObjectNotFound:
        return None
    return parse_progress(raw)
