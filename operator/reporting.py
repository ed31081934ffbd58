"""The operator's client of the API's internal job-report endpoint (cluster mode).

``POST /internal/v1/jobs/{job_id}/status`` with the operator's service key: the API moves
its job row to running (``job.started``) or concludes it (artifacts registered,
``job.succeeded``/``job.failed``). The endpoint tolerates repeats, so a report retried
after a lost answer does no harm. Standard library only (``common/service_http.py``), as
:class:`~mesial.common.audit.HttpAuditSink`.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from mesial.common.contract import sanitize_text
from mesial.common.errors import MesialError, ServiceError
from mesial.common.service_http import HttpRefused, post_json, tls_context
from mesial.common.settings import OperatorSettings

State = Literal["running", "succeeded", "failed"]
Client = TypeVar("Client")
# The endpoint's bound on ``message`` (api/schemas.py JobReport).
MAX_MESSAGE = 256
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Statuses worth retrying: the API overloaded or restarting, a key being fixed.
_RETRY = frozenset({401, 403, 408, 425, 429})


class ReportRefused(MesialError):
    """The API refused the report for good (unknown job, invalid report): retrying cannot help."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"the API refused the job report ({status}): {detail}")


class JobReporter:
    """Reports job states to the API; one per operator process."""

    path = "/internal/v1/jobs/{job_id}/status"

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0, cafile: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.context = tls_context(base_url, cafile)
        # ScanJob uid -> the terminal phase the API answered (or refused for good) in this process
        self.confirmed: dict[str, str] = {}

    @classmethod
    def from_settings(cls, op: OperatorSettings) -> JobReporter | None:
        return api_client(op, cls)

    def __repr__(self) -> str:  # never the key
        return f"JobReporter({self.base_url!r})"

    async def report(self, job_id: str, tenant: str, state: State, message: str = "") -> dict[str, Any]:
        """Report one state of ``tenant``'s job; the API's view of it. ServiceError: retry later; ReportRefused: don't.

        The API refuses a report naming another tenant than the job's: the operator's key is
        platform-wide, and a job id in a label could be copied into another tenant's ScanJob.
        """
        if not JOB_ID_RE.fullmatch(job_id):
            raise ReportRefused(0, "malformed job id")
        url = self.base_url + self.path.format(job_id=urllib.parse.quote(job_id, safe=""))
        body = json.dumps({"state": state, "tenant": tenant, "message": sanitize_text(message, MAX_MESSAGE)}).encode()
        return await asyncio.to_thread(self._post, url, body)

    def _post(self, url: str, body: bytes) -> dict[str, Any]:
        try:
            return post_json(url, self._token, body, service="the API", timeout_s=self.timeout_s, context=self.context)
        except HttpRefused as exc:
            detail = sanitize_text(exc.detail[:300], 200)
            if exc.code in _RETRY or exc.code >= 500:
                raise ServiceError(f"the API did not take the job report ({exc.code}): {detail}") from exc
            raise ReportRefused(exc.code, detail) from exc


def api_client(op: OperatorSettings, client: Callable[..., Client]) -> Client | None:
    """``client(url, key, timeout_s=, cafile=)`` for the API the operator is configured with; None without one.

    The job reporter and the audit collector's sink reach the same API with the same key.
    """
    if not op.api_configured or op.api_service_key is None:
        return None
    cafile = str(op.api_ca_cert) if op.api_ca_cert else None
    return client(op.api_url, op.api_service_key.get_secret_value(), timeout_s=op.api_timeout_s, cafile=cafile)
