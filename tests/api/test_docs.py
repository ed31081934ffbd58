"""The committed documents match the app: role table of docs/api.md, docs/openapi.json."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from mesial.api.openapi import ROLE_COLUMNS, role_table, specs
from mesial.common.errors import VaultUnavailable
from tests.api.conftest import Harness, bearer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _doc_table() -> str:
    text = (DOCS / "api.md").read_text()
    match = re.search(r"<!-- roles:begin -->\n(.*?)<!-- roles:end -->", text, re.S)
    assert match, "docs/api.md lost its role table markers"
    return match.group(1)


async def test_role_table_in_docs_matches_the_app(api: Harness) -> None:
    assert _doc_table() == role_table(api.app.routes), "regenerate the table with mesial.api.openapi.role_table"


async def test_committed_openapi_matches_the_served_one(api: Harness) -> None:
    served = (await api.client.get("/openapi.json")).json()
    assert served["openapi"].startswith("3.1")
    assert json.loads((DOCS / "openapi.json").read_text()) == served, "run: mesial api openapi -o docs/openapi.json"


async def test_roles_are_enforced_as_documented(api: Harness) -> None:
    """Each role on each route: 403 exactly where the table says '-'."""
    _org, admin = await api.new_org()
    keys = {role: await api.key(admin, role) for role in ("clinician", "technician", "auditor")}
    keys["org-admin"] = admin
    keys["platform-admin"] = await api.platform_key()
    rows = [line.split("|")[1:-1] for line in _doc_table().splitlines()[2:]]
    checked = 0
    for cells in rows:
        method, path = cells[0].strip(), cells[1].strip().strip("`")
        if cells[2].strip() == "public":
            continue
        url = re.sub(r"{[a-z_]+}", "scn_" + "0" * 24, path)
        for column, cell in zip(ROLE_COLUMNS, cells[2:], strict=False):
            if column not in keys:
                continue
            # A GET of a stream or a mutation with an empty body: only the role gate matters here.
            response = await api.client.request(method, url, headers=bearer(keys[column]), json={})
            if cell.strip() == "-":
                assert response.status_code == 403, (method, path, column, response.status_code)
            else:
                assert response.status_code != 403, (method, path, column, response.text)
            checked += 1
    assert checked >= 5 * (len(specs(api.app.routes)) - 6)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_health_and_metrics(api: Harness, path: str) -> None:
    response = await api.client.get(path)
    assert response.status_code == 200, response.text
    if path == "/readyz":
        assert response.json()["checks"] == {"database": "ok", "vault": "ok", "store": "ok"}
    if path == "/metrics":
        assert 'mesial_http_requests_total{method="GET",route="/healthz",status="200"}' in response.text


async def test_readyz_is_503_naming_what_does_not_answer(api: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md, Operations: `/readyz` is 200 when the database, Vault and the object store answer, `503`
    otherwise (a Kubernetes readiness probe takes the replica out of its Service); `/healthz` stays 200."""
    keys, store = api.runtime.need_keys(), api.runtime.need_store()

    def vault_down() -> dict[int, str]:
        raise VaultUnavailable("vault did not answer")

    async def store_down(**kwargs: object) -> None:
        raise ConnectionError("store did not answer")

    monkeypatch.setattr(keys, "public_keys", vault_down)
    response = await api.client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json() == {
        "status": "not ready",
        "checks": {"database": "ok", "vault": "failed: VaultUnavailable", "store": "ok"},
    }
    monkeypatch.setattr(store.client, "head_bucket", store_down)
    response = await api.client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["store"] == "failed: ConnectionError"
    assert (await api.client.get("/healthz")).status_code == 200
    monkeypatch.undo()
    assert (await api.client.get("/readyz")).status_code == 200


async def test_every_audited_route_appends_its_action_to_the_callers_chain(api: Harness) -> None:
    """docs/api.md: every route with an "audited as" action appends that event to the organization's
    chain, whatever the outcome (here mostly refusals: ids that do not exist, empty bodies), under the
    request's own id. The exceptions the page names: a link token that is not authentic (no tenant to
    trust: logged only), and the platform admin's routes, whose chain is `_platform` or the named
    organization's (tests/api/test_platform_admin.py)."""
    org, admin = await api.new_org()
    keys = {role: await api.key(admin, role) for role in ("clinician", "technician", "auditor")}
    keys["org-admin"] = admin
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in _doc_table().splitlines()[2:]]
    sent: dict[str, tuple[str, str, str]] = {}
    for cells in rows:
        method, path, action = cells[0], cells[1].strip("`"), cells[-1]
        allowed = [column for column, cell in zip(ROLE_COLUMNS, cells[2:], strict=False) if cell == "yes"]
        if action == "-" or not (role := next((r for r in allowed if r in keys), None)):
            continue
        url = re.sub(r"{[a-z_]+}", "scn_" + "0" * 24, path)
        request_id = secrets.token_hex(16)
        response = await api.client.request(
            method, url, headers={**bearer(keys[role]), "x-request-id": request_id}, json={}
        )
        assert response.headers["x-request-id"] == request_id
        sent[request_id] = (method, path, action)
    assert len(sent) >= 15, sent
    auditor = bearer(keys["auditor"])
    chain = {
        e["request_id"]: e
        for e in (
            json.loads(line) for line in (await api.client.get("/v1/audit/export", headers=auditor)).text.splitlines()
        )
        if e["type"] == "event"
    }
    missing = [route for request_id, route in sent.items() if chain.get(request_id, {}).get("action") != route[2]]
    assert not missing, f"routes that did not append their documented action: {missing}"
    assert all(chain[r]["tenant"] == org for r in sent)
