"""Audit sinks that need no collector: JSON Lines on disk, and in memory.

The operator appends deletion receipts through :class:`~mesial.common.audit.AuditSink`.
Until the API's collector takes events over its internal endpoint, the operator writes
them to a JSON Lines file (one event a line, appended and flushed to disk before
``append`` returns), from which the collector can ingest them later. The in-memory sink
is for local mode and tests.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from mesial.common.audit import AuditEvent


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
