from __future__ import annotations

from tests.api import meshes
from tests.api.conftest import Harness, bearer


async def test_upload_list_get(api: Harness) -> None:
    _org, admin = await api.new_org()
    scan = await api.upload(admin, "upper", meshes.arch_stl())
    assert scan["format"] == "stl" and scan["triangles"] == 2856
    listed = await api.client.get("/v1/scans", headers=bearer(admin))
    assert listed.status_code == 200, listed.text
    assert [s["id"] for s in listed.json()["items"]] == [scan["id"]]
    got = await api.client.get(f"/v1/scans/{scan['id']}", headers=bearer(admin))
    assert got.json()["sha256"] == scan["sha256"]
