"""Audit sinks of the operator: the API's collector, JSON Lines on disk, and in memory.

The operator appends deletion and retention receipts through
:class:`~mesial.common.audit.AuditSink`. With the API configured
(``operator.api_url`` and ``operator.api_service_key``) they go to the collector's
internal endpoint (:class:`CollectorAuditSink` over
:class:`~mesial.common.audit.HttpAuditSink`); without it (local mode, development) to a
JSON Lines file (one event a line, appended and flushed to disk before ``append``
returns), from which the collector can ingest them later. The in-memory sink is for
local mode and tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

from mesial.common.audit import PLATFORM_TENANT, AuditEvent, HttpAuditSink
from mesial.common.service_http import HttpRefused


class JsonlAuditSink:
    """Appends each event as one JSON line to ``path`` (created with owner-only permissions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def append(self, event: AuditEvent) -> None:
        line = json.dumps(event.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._write, line.encode())

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, object]]:
        """Every event written so far (for tests and the collector's ingestion)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class MemoryAuditSink:
    """Keeps events in a list, in order."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, event: AuditEvent) -> None:
        self.events.append(event)


class CollectorAuditSink:
    """The API's audit collector, for the operator: each event in its tenant's chain.

    An event of an organization the collector does not know (it answers 403: an
    Organization made with ``kubectl`` only, never created in the API) goes to the
    platform chain instead, with the tenant named in ``details["tenant"]``: a deletion
    receipt must land somewhere, and a refusal that retrying cannot change would keep the
    Organization's finalizer forever. Any other failure (collector down, 5xx, a bad key)
    raises :class:`~mesial.common.errors.ServiceError`: the handler retries.
    """

    def __init__(self, http: HttpAuditSink) -> None:
        self.http = http

    async def append(self, event: AuditEvent) -> None:
        try:
            await self.http.append(event)
        except HttpRefused as exc:
            if event.tenant == PLATFORM_TENANT or exc.code != 403:
                raise
            details = {**event.details, "tenant": event.tenant}
            await self.http.append(dataclasses.replace(event, tenant=PLATFORM_TENANT, details=details))
