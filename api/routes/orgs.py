"""Organizations (platform-admin), API keys and members (org-admin), and who-am-I."""

from __future__ import annotations

import functools

from starlette.responses import Response

from mesial.api import schemas
from mesial.api.audit.collector import Commit
from mesial.api.models import ApiKey, Organization
from mesial.api.routes._util import ok, route
from mesial.api.routing import Call, Spec
from mesial.api.services import orgs
from mesial.api.types import TENANT_ROLES, Role

PLATFORM = frozenset({Role.platform_admin})
ADMIN = frozenset({Role.org_admin})
ANYONE = frozenset(Role) - {Role.service}


@route(
    Spec(
        "POST",
        "/v1/orgs",
        "Create an organization",
        PLATFORM,
        action="org.created",
        resource_type="organization",
        body=schemas.OrgCreate,
        response=schemas.Org,
        status=201,
    )
)
async def create_org(call: Call) -> Response:
    # the row is made in the transaction that records org.created: never there without its event
    recorded = functools.partial(call.commit, status=201)
    org = await orgs.create_org(call.body.name, call.runtime.keys, call.body.retention_days, recorded)
    return ok(orgs.org_view(org), 201)


@route(Spec("GET", "/v1/orgs", "List organizations", PLATFORM, response=schemas.OrgList))
async def list_orgs(call: Call) -> Response:
    return ok({"items": [orgs.org_view(o) for o in await Organization.all().order_by("name")]})


@route(
    Spec(
        "POST",
        "/v1/orgs/{name}/keys",
        "Issue an organization's first key, or a break-glass org-admin key",
        PLATFORM,
        action="key.issued",
        resource_type="api_key",
        body=schemas.PlatformKeyCreate,
        response=schemas.NewKey,
        status=201,
    )
)
async def issue_org_key(call: Call) -> Response:
    org = await orgs.org_by_name(call.param("name"))
    b = call.body
    if call.mark is not None:  # the organization's own chain shows who issued its keys, or tried to
        call.mark.tenant = org.name
        call.mark.action = "key.break_glass" if b.break_glass else call.mark.action
    # the member and key are made in the transaction that records them: never there without their event
    recorded = functools.partial(call.commit, status=201)
    key, secret = await orgs.issue_platform_key(
        org, Role(b.role), b.expires_in_days, recorded, break_glass=b.break_glass
    )
    return ok({**orgs.key_view(key), "key": secret}, 201)


@route(Spec("GET", "/v1/me", "The caller's identity", ANYONE, response=schemas.Me))
async def me(call: Call) -> Response:
    return ok({"actor": call.me.actor, "role": call.me.role.value, "organization": call.me.org_name})


@route(
    Spec(
        "POST",
        "/v1/keys",
        "Issue a key for a new member of the caller's organization",
        ADMIN,
        action="key.issued",
        resource_type="api_key",
        body=schemas.KeyCreate,
        response=schemas.NewKey,
        status=201,
    )
)
async def issue_key(call: Call) -> Response:
    recorded = functools.partial(call.commit, status=201)  # as issue_org_key's
    key, secret = await orgs.issue_member_key(
        call.scope.org_id, Role(call.body.role), call.body.expires_in_days, recorded
    )
    return ok({**orgs.key_view(key), "key": secret}, 201)


@route(Spec("GET", "/v1/keys", "List the organization's keys (never their secrets)", ADMIN, response=schemas.KeyList))
async def list_keys(call: Call) -> Response:
    keys = await ApiKey.filter(org_id=call.scope.org_id, role__in=[r.value for r in TENANT_ROLES]).order_by(
        "created_at"
    )
    return ok({"items": [orgs.key_view(k) for k in keys]})


@route(
    Spec(
        "DELETE",
        "/v1/keys/{key_id}",
        "Revoke a key (effective on the next request)",
        ADMIN,
        action="key.revoked",
        resource_type="api_key",
        id_param="key_id",
        response=schemas.Key,
    )
)
async def revoke_key(call: Call) -> Response:
    recorded = functools.partial(call.commit, status=200)  # as create_org's, and the changes below
    return ok(orgs.key_view(await orgs.revoke_key(call.scope.org_id, call.param("key_id"), recorded)))


@route(
    Spec(
        "DELETE",
        "/v1/members/{member_id}",
        "Disable a member: all its keys and tokens stop working",
        ADMIN,
        action="member.disabled",
        resource_type="member",
        id_param="member_id",
        status=204,
    )
)
async def disable_member(call: Call) -> Response:
    await orgs.disable_member(call.scope.org_id, call.param("member_id"), functools.partial(call.commit, status=204))
    return Response(status_code=204)


@route(
    Spec(
        "PUT",
        "/v1/org/retention",
        "Set how long the organization's scans and results are kept",
        ADMIN,
        action="org.retention_changed",
        resource_type="organization",
        body=schemas.Retention,
        response=schemas.Org,
    )
)
async def set_retention(call: Call) -> Response:
    days = call.body.retention_days

    def recorded(previous: int) -> Commit:  # the event names the days the change replaces, read in its transaction
        return functools.partial(call.commit, status=200, days=days, previous=previous)

    return ok(orgs.org_view(await orgs.set_retention(call.scope.org_id, days, recorded)))


@route(
    Spec(
        "PUT",
        "/v1/org/break-glass",
        "Allow or forbid the platform admin's break-glass key (once no org-admin is left)",
        ADMIN,
        action="org.break_glass_changed",
        resource_type="organization",
        body=schemas.BreakGlass,
        response=schemas.Org,
    )
)
async def set_break_glass(call: Call) -> Response:
    recorded = functools.partial(call.commit, status=200, allowed=call.body.allowed)
    return ok(orgs.org_view(await orgs.set_break_glass(call.scope.org_id, call.body.allowed, recorded)))


ROUTES = [
    create_org,
    list_orgs,
    issue_org_key,
    me,
    issue_key,
    list_keys,
    revoke_key,
    disable_member,
    set_retention,
    set_break_glass,
]
