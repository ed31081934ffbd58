"""Scans: streamed, validated, encrypted upload; listing; deletion; legal hold."""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from mesial.api.audit.collector import Commit, made
from mesial.api.errors import Conflict
from mesial.api.models import Job, LegalHold, Scan
from mesial.api.services.scope import TenantScope
from mesial.api.types import iso, new_id, utcnow
from mesial.common.contract import scan_key
from mesial.common.errors import ObjectNotFound
from mesial.common.meshformat import MeshData, MeshStream
from mesial.common.objectstore import ObjectStore

log = logging.getLogger(__name__)


class ScanKind(enum.StrEnum):
    UPPER = "upper"
    LOWER = "lower"
    BITE = "bite"


def scan_view(scan: Scan) -> dict[str, Any]:
    return {
        "id": scan.id,
        "kind": scan.kind,
        "format": scan.format,
        "size": scan.size,
        "sha256": scan.sha256,
        "triangles": scan.triangles,
        "legal_hold": scan.legal_hold,
        "created_at": iso(scan.created_at),
    }


async def upload(
    scope: TenantScope,
    store: ObjectStore,
    kind: ScanKind,
    body: AsyncIterator[bytes],
    max_triangles: int,
    recorded: Callable[[int], Commit],
) -> Scan:
    """Check the mesh while it streams into the store, sealed with the tenant's key; then its row,
    in the transaction of the event that records the upload (``recorded``, given the stored size).

    The check is the aligner's own (:class:`mesial.common.meshformat.MeshStream`): format,
    strict grammar, limits, finite coordinates in range, dental size, and for an upper or
    lower scan the shape of an arch; a job never meets a file the upload would have
    refused. Any failure (a refused mesh, size limit, client gone, store down) raises
    inside the stream, which makes the store abort the write: no object and no row. The
    row is written only after the object is complete, with ``scan.uploaded``; if that
    append (or the row) fails, the object is deleted again. An object whose deletion fails
    too is left with no row: the API never serves it, and retention removes it at its age.
    """
    scan_id = new_id("scn")  # chosen first: the object's key and the event name it
    arch = kind in (ScanKind.UPPER, ScanKind.LOWER)  # an arch must also have the shape of one
    check = MeshStream(max_triangles=max_triangles, keep=False, role=kind.value, arch=arch)
    info: MeshData | None = None

    async def checked() -> AsyncIterator[bytes]:
        nonlocal info
        async for piece in body:
            if piece:
                check.feed(piece)
                yield piece
        info = check.finish()

    stored = await store.put(scope.org, scan_key(scan_id), checked())
    assert info is not None
    mesh = info

    async def make(conn: BaseDBAsyncClient) -> Scan:
        return await Scan.create(
            using_db=conn,
            id=scan_id,
            org_id=scope.org_id,
            created_by=scope.principal.member_id,
            kind=kind.value,
            format=mesh.file_format.split("-")[0],  # "stl", "ply" or "obj"
            size=stored.size,
            sha256=stored.sha256,
            triangles=mesh.triangle_count,
            created_at=utcnow(),
        )

    try:
        return await made(make, recorded(stored.size), scan_id)
    except BaseException:
        try:
            await store.delete(scope.org, scan_key(scan_id))
        except Exception as exc:  # the object has no row: never served, removed by retention at its age
            log.error("scan %s: object left without its row: %s", scan_id, type(exc).__name__)
        raise


async def remove(org: str, store: ObjectStore, scan: Scan, commit: Commit | None = None) -> None:
    """The one deletion of a scan (``DELETE /v1/scans/{id}`` and retention's record sweep):
    refused while held or an input of a queued or running job; the object, then the row.

    ``commit``, when given, deletes the row in the transaction that records the deletion
    (``Call.commit``): if that fails the row stays, and the same deletion asked again finishes it
    (the object already gone is skipped)."""
    if scan.legal_hold:
        raise Conflict("scan is on legal hold")
    active = await Job.filter(org_id=scan.org_id, state__in=["queued", "running"])
    if any(scan.id in (job.upper_id, job.lower_id, *job.bite_ids) for job in active):
        raise Conflict("scan is an input of a queued or running job")
    try:
        await store.delete(org, scan_key(scan.id))  # refuses LegalHoldActive itself too
    except ObjectNotFound:
        pass  # already gone (an earlier attempt, or retention): the row still has to go

    async def delete_row(conn: BaseDBAsyncClient | None = None) -> None:
        await Scan.filter(id=scan.id, org_id=scan.org_id).using_db(conn).delete()

    await (delete_row() if commit is None else commit(delete_row))


async def set_hold(scope: TenantScope, store: ObjectStore, scan_id: str, on: bool, commit: Commit) -> Scan:
    """Place (``on``) or lift a scan's legal hold: the object's in the store, then the scan's row and
    a row of the hold's history in ``commit``'s transaction (the one appending ``scan.hold_placed`` or
    ``scan.hold_lifted``). If that append fails the rows are as they were and the store's hold stays
    as set; the same request asked again finishes it (setting the store's hold again changes nothing)."""
    scan = await scope.scan(scan_id)
    await store.set_legal_hold(scope.org, scan_key(scan.id), on)

    async def record(conn: BaseDBAsyncClient) -> None:
        await Scan.filter(id=scan.id).using_db(conn).update(legal_hold=on)
        await LegalHold.create(
            using_db=conn,
            id=new_id("hld"),
            org_id=scope.org_id,
            scan_id=scan.id,
            placed=on,
            actor=scope.principal.actor,
            at=utcnow(),
        )

    await commit(record)
    scan.legal_hold = on
    return scan
