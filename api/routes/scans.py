"""Scans: upload (streamed, checked, encrypted), list, get, delete, legal hold."""

from __future__ import annotations

import functools

from starlette.responses import Response

from mesial.api import schemas
from mesial.api.audit.collector import Commit
from mesial.api.errors import UnsupportedMediaType
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec
from mesial.api.services import scans
from mesial.api.services.pagination import page
from mesial.api.types import CASE_ROLES, Role

ADMIN = frozenset({Role.org_admin})
UPLOAD_TYPES = (
    "application/octet-stream",
    "model/stl",
    "model/obj",
    "application/sla",
    "text/plain",
    "application/ply",
)


@route(
    Spec(
        "POST",
        "/v1/scans",
        "Upload a scan (STL, PLY or OBJ), streamed and encrypted",
        CASE_ROLES,
        action="scan.uploaded",
        resource_type="scan",
        query=schemas.UploadQuery,
        response=schemas.Scan,
        status=201,
        raw_body=UPLOAD_TYPES,
    )
)
async def upload_scan(call: Call) -> Response:
    media = call.request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if media not in UPLOAD_TYPES:
        raise UnsupportedMediaType("send the mesh as application/octet-stream")
    max_triangles = call.runtime.settings.aligner.max_triangles
    # the row is written in the transaction that records scan.uploaded (with the stored size): never without it

    def recorded(size: int) -> Commit:
        return functools.partial(call.commit, status=201, size=size)

    store, body = call.runtime.need_store(), call.request.stream()
    scan = await scans.upload(call.scope, store, call.query.kind, body, max_triangles, recorded)
    return ok(scans.scan_view(scan), 201)


@route(
    Spec(
        "GET",
        "/v1/scans",
        "List scans, oldest first, by pages",
        CASE_ROLES,
        query=schemas.Page,
        response=schemas.ScanList,
    )
)
async def list_scans(call: Call) -> Response:
    rows, cursor = await page(call.scope.scans(), call.query.limit, call.query.cursor)
    return ok({"items": [scans.scan_view(s) for s in rows], "next_cursor": cursor})


@route(
    Spec(
        "GET",
        "/v1/scans/{scan_id}",
        "A scan's metadata",
        CASE_ROLES,
        action="scan.viewed",
        resource_type="scan",
        id_param="scan_id",
        response=schemas.Scan,
    )
)
async def get_scan(call: Call) -> Response:
    return ok(scans.scan_view(await call.scope.scan(call.param("scan_id"))))


@route(
    Spec(
        "DELETE",
        "/v1/scans/{scan_id}",
        "Delete a scan: its object and its row (refused on legal hold)",
        ADMIN,
        action="scan.deleted",
        resource_type="scan",
        id_param="scan_id",
        status=204,
    )
)
async def delete_scan(call: Call) -> Response:
    scan = await call.scope.scan(call.param("scan_id"))
    # the row goes in the transaction that records scan.deleted: never gone without its event
    recorded = functools.partial(call.commit, status=204, sha256=scan.sha256)
    await scans.remove(call.scope.org, call.runtime.need_store(), scan, recorded)
    return Response(status_code=204)


@route(
    Spec(
        "PUT",
        "/v1/scans/{scan_id}/legal-hold",
        "Place a legal hold",
        ADMIN,
        action="scan.hold_placed",
        resource_type="scan",
        id_param="scan_id",
        response=schemas.Scan,
    )
)
async def place_hold(call: Call) -> Response:
    # the rows change in the transaction that records scan.hold_placed (the store's hold before it)
    recorded = functools.partial(call.commit, status=200)
    scan = await scans.set_hold(call.scope, call.runtime.need_store(), call.param("scan_id"), True, recorded)
    return ok(scans.scan_view(scan))


@route(
    Spec(
        "DELETE",
        "/v1/scans/{scan_id}/legal-hold",
        "Lift a legal hold",
        ADMIN,
        action="scan.hold_lifted",
        resource_type="scan",
        id_param="scan_id",
        response=schemas.Scan,
    )
)
async def lift_hold(call: Call) -> Response:
    recorded = functools.partial(call.commit, status=200)  # as place_hold's
    scan = await scans.set_hold(call.scope, call.runtime.need_store(), call.param("scan_id"), False, recorded)
    return ok(scans.scan_view(scan))


ROUTES = [upload_scan, list_scans, get_scan, delete_scan, place_hold, lift_hold]
