"""Audit events and the sink interface every component appends through.

An event records who did what to which resource, by opaque ids only: no PHI, no file
names, no labels. The API's audit collector (issue 5) stores events in per-tenant,
hash-chained, append-only tables and signs checkpoints; the operator and jobs send
theirs over its authenticated internal endpoint. Both sides speak :class:`AuditSink`.

Chain primitives live here too, so that the collector and the offline verifier
(``mesial audit verify``) compute the same hash from the same canonical encoding.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

Outcome = Literal["success", "denied", "failure"]
GENESIS_HASH = "0" * 64
PLATFORM_TENANT = "_platform"


@dataclass(frozen=True)
class AuditEvent:
    """One audited action, before the collector gives it a place in its tenant's chain."""

    tenant: str  # organization name, or PLATFORM_TENANT for platform-level actions
    actor: str  # user or API key id, or "service:<name>"
    action: str  # dotted verb, e.g. "scan.uploaded", "retention.deleted", "org.shredded"
    resource_type: str  # "scan", "job", "artifact", "organization", ...
    resource_id: str  # opaque id, never a name or a label
    outcome: Outcome = "success"
    source_ip: str = ""
    request_id: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, str | int | float | bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return data


def canonical(record: dict[str, Any]) -> bytes:
    """The canonical encoding hashed into the chain: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous_hash: str, sequence: int, event: dict[str, Any]) -> str:
    """SHA-256 over the previous hash, the sequence number and the canonical event."""
    body = {**event, "sequence": sequence, "previous_hash": previous_hash}
    body.pop("hash", None)
    return hashlib.sha256(canonical(body)).hexdigest()


@runtime_checkable
class AuditSink(Protocol):
    """Where components append audit events (the collector, in-process or over HTTP)."""

    async def append(self, event: AuditEvent) -> None: ...
