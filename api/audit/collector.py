"""Appends events to per-tenant hash chains in the database; signs checkpoints; exports.

Linearity under concurrent writers: appends to one tenant's chain are serialized by an
in-process lock and, on PostgreSQL, by a transaction-scoped advisory lock on the tenant
(several API replicas), on SQLite by the database's write lock, taken at the transaction's
start (other processes on the file: ``mesial admin`` beside a local-mode server; see
:mod:`mesial.api.db`), and ``UNIQUE (tenant, sequence)`` refuses any fork that slipped
through. The tables are append-only by database triggers (``api/migrations``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.queryset import QuerySet

from mesial.api.db import write_transaction
from mesial.api.models import AuditCheckpoint, AuditEventRow
from mesial.common import audit
from mesial.common.audit import GENESIS_HASH, AuditEvent, canonical, chain_hash, format_time
from mesial.common.vault import TenantKeys

BATCH = 1000


def _lock_key(tenant: str) -> int:
    return int.from_bytes(hashlib.sha256(b"mesial-audit:" + tenant.encode()).digest()[:8], "big", signed=True)


def record_of(row: AuditEventRow) -> dict[str, Any]:
    """The exported/hashed form of a stored event."""
    return {
        "tenant": row.tenant,
        "actor": row.actor,
        "source_ip": row.source_ip,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "time": row.time,
        "details": json.loads(row.details),
        "sequence": int(row.sequence),
        "previous_hash": row.previous_hash,
        "hash": row.hash,
    }


# given the chain's events about the same thing as a new event: the one that is that event, if any
Held = Callable[[list[dict[str, Any]]], dict[str, Any] | None]
# a database change committed with the event that records it (given the transaction's connection)
Change = Callable[[BaseDBAsyncClient], Awaitable[Any]]


class Commit(Protocol):
    """Runs a :data:`Change` in the transaction that appends the event recording it, that event naming
    ``resource_id`` if given (what the change makes): :meth:`mesial.api.routing.Call.commit` bound to
    its status and details, or ``mesial admin``'s append."""

    def __call__(self, change: Change, *, resource_id: str | None = None) -> Awaitable[None]: ...


T = TypeVar("T")


async def made(
    change: Callable[[BaseDBAsyncClient], Awaitable[T]], commit: Commit, resource_id: str | None = None
) -> T:
    """What ``change`` returns, run in ``commit``'s transaction (the one appending the event that records
    it, naming ``resource_id`` if given): a row made with its event, or not at all."""
    result: list[T] = []

    async def run(conn: BaseDBAsyncClient) -> None:
        result.append(await change(conn))

    await commit(run, resource_id=resource_id)
    return result[0]


async def _about(event: AuditEvent, query: QuerySet[AuditEventRow]) -> list[AuditEventRow]:
    same = {"actor": event.actor, "action": event.action, "resource_type": event.resource_type}
    found = query.filter(tenant=event.tenant, resource_id=event.resource_id, **same)
    return list(await found.order_by("sequence"))


@dataclass(frozen=True)
class Head:
    tenant: str
    sequence: int
    hash: str


class AuditCollector:
    """The :class:`~mesial.common.audit.AuditSink` of the API process."""

    def __init__(self, keys: TenantKeys | None, dialect: str) -> None:
        self.keys = keys
        self.dialect = dialect
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.appended = 0

    async def append(self, event: AuditEvent) -> None:
        await self.append_record(event)

    async def append_record(self, event: AuditEvent) -> dict[str, Any]:
        record, _ = await self.append_unless(event, None)
        return record

    async def about(self, event: AuditEvent) -> list[dict[str, Any]]:
        """The events of ``event``'s chain by the same actor with the same action on the same resource."""
        return [record_of(row) for row in await _about(event, AuditEventRow.filter())]

    async def append_unless(
        self, event: AuditEvent, held: Held | None, change: Change | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Append ``event`` unless ``held``, given :meth:`about` read under the chain's lock, returns one
        of those events (or raises): at most one of several writers of one event appends it, on every
        replica. Returns the chain's record and whether it is new.

        ``change``, given the transaction's connection, runs in the same transaction before the
        append: the change and its event are committed together or not at all."""
        body = event.as_dict()
        body["details"] = json.loads(canonical(body["details"]))
        async with self._locks[event.tenant], write_transaction() as conn:
            if self.dialect == "postgres":
                await conn.execute_query("SELECT pg_advisory_xact_lock($1)", [_lock_key(event.tenant)])
            if change is not None:
                await change(conn)
            if held is not None:
                found = held([record_of(row) for row in await _about(event, AuditEventRow.filter().using_db(conn))])
                if found is not None:
                    return found, False
            last = await AuditEventRow.filter(tenant=event.tenant).using_db(conn).order_by("-sequence").first()
            sequence = int(last.sequence) + 1 if last else 1
            previous = last.hash if last else GENESIS_HASH
            digest = chain_hash(previous, sequence, body)
            await AuditEventRow.create(
                using_db=conn,
                tenant=event.tenant,
                sequence=sequence,
                time=body["time"],
                actor=event.actor,
                source_ip=event.source_ip,
                action=event.action,
                resource_type=event.resource_type,
                resource_id=event.resource_id,
                outcome=event.outcome,
                request_id=event.request_id,
                details=canonical(body["details"]).decode(),
                previous_hash=previous,
                hash=digest,
            )
        self.appended += 1
        return {**body, "sequence": sequence, "previous_hash": previous, "hash": digest}, True

    # -- heads and checkpoints -------------------------------------------------------
    async def head(self, tenant: str) -> Head | None:
        last = await AuditEventRow.filter(tenant=tenant).order_by("-sequence").first()
        return Head(tenant, int(last.sequence), last.hash) if last else None

    async def checkpoint(self, tenant: str) -> AuditCheckpoint | None:
        """Sign the tenant's chain head unless the newest checkpoint already covers it."""
        if self.keys is None:
            return None
        head = await self.head(tenant)
        if head is None:
            return None
        newest = await AuditCheckpoint.filter(tenant=tenant).order_by("-sequence").first()
        if newest is not None and int(newest.sequence) >= head.sequence:
            return newest
        time = format_time(datetime.now(UTC))
        message = audit.checkpoint_message(tenant, head.sequence, head.hash, time)
        signature = await asyncio.to_thread(self.keys.sign, message)
        return await AuditCheckpoint.create(
            tenant=tenant, sequence=head.sequence, head_hash=head.hash, time=time, signature=signature
        )

    async def checkpoint_all(self) -> int:
        """Checkpoint every chain whose head moved; returns how many were signed."""
        found: Any = await AuditEventRow.all().distinct().values_list("tenant", flat=True)
        tenants = [str(t) for t in found]
        signed = 0
        for tenant in sorted(set(tenants)):
            before = await AuditCheckpoint.filter(tenant=tenant).count()
            await self.checkpoint(tenant)
            signed += int(await AuditCheckpoint.filter(tenant=tenant).count() > before)
        return signed

    # -- export ---------------------------------------------------------------------
    async def export(self, tenant: str, start: datetime | None, end: datetime | None) -> AsyncIterator[str]:
        """JSON Lines: header (with the public keys), events, checkpoints, signed manifest."""
        if self.keys is None:
            raise RuntimeError("export needs the signing key")
        await self.checkpoint(tenant)
        public_keys = await asyncio.to_thread(self.keys.public_keys)
        frm = format_time(start) if start else None
        to = format_time(end) if end else None
        query = AuditEventRow.filter(tenant=tenant)
        if frm:
            query = query.filter(time__gte=frm)
        if to:
            query = query.filter(time__lt=to)
        sequences: Any = await query.values_list("sequence", flat=True)
        bounds = [int(s) for s in sequences]
        low, high = (min(bounds), max(bounds)) if bounds else (0, -1)
        header = {
            "type": "header",
            "format": audit.EXPORT_FORMAT,
            "version": audit.EXPORT_VERSION,
            "tenant": tenant,
            "from": frm,
            "to": to,
            "exported_at": format_time(datetime.now(UTC)),
            "public_keys": {str(v): k for v, k in public_keys.items()},
        }
        yield json.dumps(header, sort_keys=True) + "\n"
        first: dict[str, Any] | None = None
        last: dict[str, Any] | None = None
        count = 0
        cursor = low
        while cursor <= high:
            rows = (
                await AuditEventRow.filter(tenant=tenant, sequence__gte=cursor, sequence__lte=high)
                .order_by("sequence")
                .limit(BATCH)
            )
            if not rows:
                break
            for row in rows:
                record = record_of(row)
                first = first or record
                last = record
                count += 1
                yield json.dumps(audit.event_line(record), sort_keys=True, ensure_ascii=False) + "\n"
            cursor = int(rows[-1].sequence) + 1
        checkpoint_sequences: list[int] = []
        for cp in await AuditCheckpoint.filter(tenant=tenant, sequence__gte=low, sequence__lte=high).order_by("id"):
            checkpoint_sequences.append(int(cp.sequence))
            line = {
                "type": "checkpoint",
                "tenant": tenant,
                "sequence": int(cp.sequence),
                "head_hash": cp.head_hash,
                "time": cp.time,
                "signature": cp.signature,
            }
            yield json.dumps(line, sort_keys=True) + "\n"
        manifest: dict[str, Any] = {
            "type": "manifest",
            "tenant": tenant,
            "from": frm,
            "to": to,
            "count": count,
            "first_sequence": first["sequence"] if first else None,
            "first_previous_hash": first["previous_hash"] if first else None,
            "last_sequence": last["sequence"] if last else None,
            "last_hash": last["hash"] if last else None,
            "checkpoint_sequences": checkpoint_sequences,
            "header_sha256": audit.header_digest(header),
            "time": format_time(datetime.now(UTC)),
        }
        manifest["signature"] = await asyncio.to_thread(self.keys.sign, audit.manifest_message(manifest))
        yield json.dumps(manifest, sort_keys=True) + "\n"
