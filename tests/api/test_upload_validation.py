"""Uploads get the aligner's own checks while they stream (issue 11, finding 7).

Every hostile file of the shared corpus gets a 4xx with the reason and the request id,
and leaves no object and no row; every valid file of every format is stored.
"""

from __future__ import annotations

import pytest

from mesial.api.app import db_context
from mesial.api.models import Organization, Scan
from tests.api import meshes
from tests.api.conftest import Harness, bearer
from tests.hostile_meshes import grid, hostile_corpus, stl_binary, valid_corpus

HOSTILE = hostile_corpus()
VALID = valid_corpus()
STATUS = {"ScanTooLarge": 413, "UnsupportedScanFormat": 415}


async def _nothing_stored(api: Harness, org: str) -> bool:
    objects = [m.key async for m in api.runtime.store.list(org, "")]
    with db_context(api.app):
        found = await Organization.get(name=org)
        rows = await Scan.filter(org_id=found.id).count()
    return objects == [] and rows == 0


async def _chunks(data: bytes, size: int):  # no Content-Length: checked while streaming
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_uploads_are_refused_and_leave_nothing(api: Harness, name: str) -> None:
    case = HOSTILE[name]
    org, admin = await api.new_org()
    for content in (case.data, _chunks(case.data, 1000)):
        response = await api.client.post("/v1/scans", params={"kind": "upper"}, content=content, headers=bearer(admin))
        assert response.status_code == STATUS.get(case.error.__name__, 422), response.text
        error = response.json()["error"]
        assert error["request_id"] == response.headers["x-request-id"]
        assert error["message"].startswith("upper scan: ") and case.message in error["message"]
        assert await _nothing_stored(api, org)


@pytest.mark.parametrize("name", sorted(VALID))
async def test_valid_uploads_of_every_format_are_stored(api: Harness, name: str) -> None:
    case = VALID[name]
    _org, admin = await api.new_org()
    scan = await api.upload(admin, "bite", case.data)
    assert (scan["format"], scan["triangles"], scan["size"]) == (
        case.file_format.split("-")[0],
        case.triangles,
        len(case.data),
    )


async def test_an_arch_upload_must_look_like_an_arch(api: Harness) -> None:
    """An upper or lower scan that is a flat plate, or too small a mesh, is refused as the aligner would; a bite is a patch."""
    org, admin = await api.new_org()
    plate = stl_binary(*grid(40.0, 0.5))  # 12 800 triangles, flat
    response = await api.client.post("/v1/scans", params={"kind": "lower"}, content=plate, headers=bearer(admin))
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("lower scan: 0.00 mm thick")
    sparse = meshes.stl_binary(40)
    response = await api.client.post("/v1/scans", params={"kind": "upper"}, content=sparse, headers=bearer(admin))
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "upper scan: 40 triangles: a dental arch scan has at least 2,000"
    assert await _nothing_stored(api, org)
    assert (await api.upload(admin, "bite", plate))["triangles"] == 12800
    assert (await api.upload(admin, "upper", meshes.arch_stl()))["triangles"] == 2856
