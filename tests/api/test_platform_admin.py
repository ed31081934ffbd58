"""The platform admin creates organizations and issues their first keys, and reaches no scan content.

Once an organization has a member, its keys are its own admins' business. The one way
back in is break-glass: only when the organization has no active org-admin left, only if
the organization has not forbidden it, and always as a ``key.break_glass`` event in the
organization's own chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from mesial.api.app import db_context
from mesial.api.models import ApiKey, Member
from mesial.api.services import orgs
from mesial.api.types import utcnow
from tests.api.conftest import Harness, bearer, variant
from tests.api.test_audit import events, export


async def _org(api: Harness) -> tuple[str, dict[str, str]]:
    name = f"org-{secrets.token_hex(4)}"
    platform = bearer(await api.platform_key())
    assert (await api.client.post("/v1/orgs", json={"name": name}, headers=platform)).status_code == 201
    return name, platform


async def test_platform_admin_issues_first_keys_only(api: Harness) -> None:
    name, platform = await _org(api)
    first = await api.client.post(f"/v1/orgs/{name}/keys", json={"role": "org-admin"}, headers=platform)
    assert first.status_code == 201, first.text
    admin = first.json()["key"]
    scan = await api.upload(admin, "upper")
    for role in ("org-admin", "technician", "auditor"):
        again = await api.client.post(f"/v1/orgs/{name}/keys", json={"role": role}, headers=platform)
        assert again.status_code == 403, (role, again.status_code, again.text)
        assert again.json()["error"]["code"] == "forbidden"
    # no key of the platform's making reaches the scan; the organization's own admin still does
    assert (await api.client.get(f"/v1/scans/{scan['id']}", headers=platform)).status_code == 403
    keys = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"]
    assert len(keys) == 1
    found = events(await export(api, admin))
    refused = [e for e in found if e["action"] == "key.issued" and e["outcome"] == "denied"]
    assert len(refused) == 3 and all(e["actor"].startswith("key:") for e in refused)


async def test_break_glass_needs_a_lost_admin_and_is_in_the_tenant_chain(api: Harness) -> None:
    name, platform = await _org(api)
    admin = (await api.client.post(f"/v1/orgs/{name}/keys", json={"role": "org-admin"}, headers=platform)).json()["key"]
    auditor = await api.key(admin, "auditor")
    # an organization with an active admin recovers itself: break-glass is refused
    glass = {"role": "org-admin", "break_glass": True}
    refused = await api.client.post(f"/v1/orgs/{name}/keys", json=glass, headers=platform)
    assert refused.status_code == 409, refused.text
    # the admin is lost (its member disabled by itself): break-glass works, for one day at most
    me = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"][0]
    assert (await api.client.delete(f"/v1/members/{me['member_id']}", headers=bearer(admin))).status_code == 204
    for wrong in ({"role": "technician", "break_glass": True}, {"role": "org-admin"}):
        assert (await api.client.post(f"/v1/orgs/{name}/keys", json=wrong, headers=platform)).status_code in (403, 422)
    issued = await api.client.post(f"/v1/orgs/{name}/keys", json=glass, headers=platform)
    assert issued.status_code == 201, issued.text
    assert issued.json()["expires_at"] is not None
    recovered = issued.json()["key"]
    response = await api.client.get("/v1/audit/export", headers=bearer(auditor))
    chain = [line for line in events(response.text.splitlines()) if line["action"] == "key.break_glass"]
    assert [(e["outcome"], e["resource_id"]) for e in chain][-1] == ("success", issued.json()["id"])
    # the recovered admin forbids it from now on; a later break-glass is refused and audited too
    forbid = await api.client.put("/v1/org/break-glass", json={"allowed": False}, headers=bearer(recovered))
    assert forbid.status_code == 200 and forbid.json()["break_glass_allowed"] is False
    me = (await api.client.get("/v1/me", headers=bearer(recovered))).json()
    key_id = me["actor"].removeprefix("key:")
    keys = (await api.client.get("/v1/keys", headers=bearer(recovered))).json()["items"]
    member = next(k["member_id"] for k in keys if k["id"] == key_id)
    assert (await api.client.delete(f"/v1/members/{member}", headers=bearer(recovered))).status_code == 204
    again = await api.client.post(f"/v1/orgs/{name}/keys", json=glass, headers=platform)
    assert again.status_code == 403 and "forbidden" in again.json()["error"]["message"]
    response = await api.client.get("/v1/audit/export", headers=bearer(auditor))
    found = events(response.text.splitlines())
    assert ("org.break_glass_changed", "success") in [(e["action"], e["outcome"]) for e in found]
    assert [e["outcome"] for e in found if e["action"] == "key.break_glass"][-1] == "denied"


@contextlib.asynccontextmanager
async def _start_together(api: Harness, count: int) -> AsyncIterator[None]:
    """On PostgreSQL, hold the members table (every request's credential lookup reads it) until
    ``count`` requests wait on it, then let them go at once: a replica's first request opens a new
    pooled connection, which alone would let the other request finish first. SQLite: no-op."""
    if api.backend != "postgres":
        yield
        return
    connection = await asyncpg.connect(api.runtime.settings.database_url)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE members IN ACCESS EXCLUSIVE MODE")
            yield
            waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'members'::regclass AND NOT granted"
            for _ in range(600):
                if await connection.fetchval(waiting) >= count:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the requests never reached the database")
    finally:
        await connection.close()


async def test_two_simultaneous_first_keys_give_one_key(api: Harness, tmp_path: Path) -> None:
    """Simultaneous first-key requests (eight: two would often not overlap), on two API replicas (two
    connection pools) of one PostgreSQL, or the one local-mode process on SQLite: each can see an
    organization without members, but issuing is serialized on the organization's row, so exactly one
    gets a key and every other a 403 that says why, with its request id."""
    name, platform = await _org(api)
    async with contextlib.AsyncExitStack() as stack:
        # PostgreSQL serves several replicas; SQLite is local mode, one process (one connection)
        replica = await stack.enter_async_context(variant(api, tmp_path)) if api.backend == "postgres" else api
        url, body = f"/v1/orgs/{name}/keys", {"role": "org-admin"}
        async with _start_together(api, 8):
            tasks = [asyncio.create_task(h.client.post(url, json=body, headers=platform)) for h in (api, replica) * 4]
        responses = await asyncio.gather(*tasks)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [403] * 7, [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 403):
        error = refused.json()["error"]
        assert error["code"] == "forbidden" and "has members" in error["message"]
        assert error["request_id"] == refused.headers["x-request-id"]
    with db_context(api.app):
        org_id = (await orgs.org_by_name(name)).id
        assert await Member.filter(org_id=org_id).count() == 1
        assert await ApiKey.filter(org_id=org_id).count() == 1


async def test_a_break_glass_key_lives_one_day_at_most(api: Harness) -> None:
    """docs/api.md: the break-glass key "expires after one day", whatever lifetime is asked for. A day and a
    second after it was issued it is refused, and it no longer counts as the organization's admin (another
    break-glass is possible); a second before, it still works."""
    name, platform = await _org(api)
    admin = (await api.client.post(f"/v1/orgs/{name}/keys", json={"role": "org-admin"}, headers=platform)).json()["key"]
    me = (await api.client.get("/v1/keys", headers=bearer(admin))).json()["items"][0]
    assert (await api.client.delete(f"/v1/members/{me['member_id']}", headers=bearer(admin))).status_code == 204
    glass = {"role": "org-admin", "break_glass": True, "expires_in_days": 3650}
    issued = await api.client.post(f"/v1/orgs/{name}/keys", json=glass, headers=platform)
    assert issued.status_code == 201, issued.text
    key = issued.json()
    created, expires = (datetime.fromisoformat(key[f]) for f in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=1), key

    async def age(by: timedelta) -> int:
        """The key's status code on its next request, as if it had been issued ``by`` ago."""
        with db_context(api.app):
            row = await ApiKey.get(id=key["id"])
            assert row.expires_at is not None
            lifetime = row.expires_at - row.created_at
            await ApiKey.filter(id=key["id"]).update(created_at=utcnow() - by, expires_at=utcnow() - by + lifetime)
        return (await api.client.get("/v1/keys", headers=bearer(key["key"]))).status_code

    assert await age(timedelta(days=1) - timedelta(seconds=1)) == 200
    assert await age(timedelta(days=1, seconds=1)) == 401
    again = await api.client.post(f"/v1/orgs/{name}/keys", json=glass, headers=platform)
    assert again.status_code == 201, again.text  # the expired key is no active admin
