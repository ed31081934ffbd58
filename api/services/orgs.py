"""Organizations, members and API keys (platform-admin and org-admin operations)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError as DbIntegrityError

from mesial.api.audit.collector import Change, Commit
from mesial.api.auth import issue_key, new_member
from mesial.api.db import write_transaction
from mesial.api.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mesial.api.models import ApiKey, Member, Organization
from mesial.api.services.ingest import grant_for
from mesial.api.services.scope import OPAQUE_ID_RE
from mesial.api.types import KEY_TTL_DAYS, RETENTION_DAYS, TENANT_ROLES, DayRange, Role, iso, new_id, utcnow
from mesial.common.tenancy import ORG_NAME_RE, validate_org_name
from mesial.common.vault import TenantKeys

# A break-glass key lives one day at most: long enough to issue the organization a new admin of its own.
BREAK_GLASS_TTL_DAYS = 1


def _check(days_range: DayRange, days: int | None) -> None:
    try:
        days_range.check(days)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None


def org_view(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "name": org.name,
        "retention_days": org.retention_days,
        "break_glass_allowed": org.break_glass_allowed,
        "created_at": iso(org.created_at),
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": f"mesial_{key.prefix}",
        "role": key.role,
        "member_id": key.member_id,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
    }


async def create_org(name: str, keys: TenantKeys | None, retention_days: int = 90) -> Organization:
    """The organization row and its Vault key (idempotent in Vault; the row is new)."""
    validate_org_name(name)
    _check(RETENTION_DAYS, retention_days)
    if await Organization.exists(name=name):
        raise Conflict("organization exists")
    if keys is not None:
        await asyncio.to_thread(keys.ensure_transit)
        await asyncio.to_thread(keys.ensure_key, name)
    try:
        return await Organization.create(
            id=new_id("org"), name=name, retention_days=retention_days, created_at=utcnow()
        )
    except DbIntegrityError:
        raise Conflict("organization exists") from None


async def org_by_name(name: str) -> Organization:
    org = await Organization.get_or_none(name=name) if ORG_NAME_RE.fullmatch(name) else None
    if org is None:
        raise NotFound("organization not found")
    return org


async def issue_member_key(
    org_id: str | None, role: Role, ttl_days: int | None, commit: Commit | None = None
) -> tuple[ApiKey, str]:
    """A new member of ``role`` and its first key (shown once).

    ``commit``, when given, makes them in the transaction that appends the event recording their
    issuance (``Call.commit``, ``mesial admin``'s append): if that append fails neither exists."""
    _check_member_key(org_id, role, ttl_days)
    return await _issue(org_id, role, ttl_days, commit)


def _check_member_key(org_id: str | None, role: Role, ttl_days: int | None) -> None:
    if org_id is not None and role not in TENANT_ROLES:
        raise ValidationFailed(f"role {role.value} cannot belong to an organization")
    _check(KEY_TTL_DAYS, ttl_days)


async def _issue(
    org_id: str | None,
    role: Role,
    ttl_days: int | None,
    commit: Commit | None,
    subject: str | None = None,
    allowed: Change | None = None,
) -> tuple[ApiKey, str]:
    """The one issuance: the member and its key, made in ``commit``'s transaction (or one of their
    own) after ``allowed``, given that transaction's connection, has not refused."""
    key_id = new_id("key")  # chosen first: the event that records the key names it
    ttl = None if ttl_days is None else timedelta(days=ttl_days)
    issued: list[tuple[ApiKey, str]] = []

    async def make(conn: BaseDBAsyncClient) -> None:
        if allowed is not None:
            await allowed(conn)
        member = await new_member(org_id, role, subject, using_db=conn)
        issued.append(await issue_key(member=member, role=role, org_id=org_id, ttl=ttl, key_id=key_id, using_db=conn))

    await (commit or _unrecorded)(make, resource_id=key_id)
    return issued[0]


async def _unrecorded(change: Change, *, resource_id: str | None = None) -> None:
    """A :class:`Commit` appending no event (tests, scripts): the member and key are still made together."""
    async with write_transaction() as conn:
        await change(conn)


async def issue_platform_key(
    org: Organization, role: Role, ttl_days: int | None, commit: Commit, *, break_glass: bool = False
) -> tuple[ApiKey, str]:
    """A key the platform admin issues into ``org``: its first keys, or break-glass.

    The platform admin reaches no scan content: once the organization has a member, its
    keys are its org-admins' to issue. Break-glass gives one org-admin key (one day at
    most) only to an organization that has no active org-admin left and has not forbidden
    it; the route audits it as ``key.break_glass`` in the organization's own chain.

    Atomic per organization: the checks and the new member and key are ``commit``'s one
    transaction (the one appending the event), which first takes the organization's row for
    writing (a row lock on PostgreSQL, the database's write lock on SQLite), so of two
    simultaneous first-key (or break-glass) requests the second sees the member the first
    created and is refused.
    """
    if break_glass:
        if role is not Role.org_admin:
            raise ValidationFailed("break-glass issues an org-admin key only")
        ttl_days = min(ttl_days or BREAK_GLASS_TTL_DAYS, BREAK_GLASS_TTL_DAYS)
    _check_member_key(org.id, role, ttl_days)

    async def allowed(conn: BaseDBAsyncClient) -> None:
        # the lock: a write to the organization's row, held until commit
        await Organization.filter(id=org.id).using_db(conn).update(name=org.name)
        if not break_glass:
            members = Member.filter(org_id=org.id, role__in=[r.value for r in TENANT_ROLES]).using_db(conn)
            if await members.exists():
                raise Forbidden(
                    "the organization has members: its org-admins issue its keys (break-glass if it has lost them all)"
                )
            return
        current = await Organization.filter(id=org.id).using_db(conn).get()  # under the lock: it may have changed
        if not current.break_glass_allowed:
            raise Forbidden("the organization has forbidden break-glass access")
        if await has_active_admin(org.id, conn):
            raise Conflict("the organization has an active org-admin: keys are theirs to issue")

    return await _issue(org.id, role, ttl_days, commit, allowed=allowed)


async def has_active_admin(org_id: str, conn: BaseDBAsyncClient | None = None) -> bool:
    """Whether an org-admin of ``org_id`` can still act: a member not disabled, with a live key or SSO."""
    now = utcnow()
    admins = Member.filter(org_id=org_id, role=Role.org_admin.value, disabled_at=None).using_db(conn)
    for member in await admins:
        if member.subject.startswith("oidc:"):
            return True
        live = ApiKey.filter(member_id=member.id, revoked_at=None).using_db(conn)
        if await live.filter(expires_at=None).exists() or await live.filter(expires_at__gt=now).exists():
            return True
    return False


async def set_break_glass(org_id: str, allowed: bool) -> Organization:
    org = await Organization.get(id=org_id)
    if org.break_glass_allowed != allowed:
        org.break_glass_allowed = allowed
        await org.save(update_fields=["break_glass_allowed"])
    return org


async def issue_service_key(name: str, org_id: str | None = None, commit: Commit | None = None) -> tuple[ApiKey, str]:
    """A key for a service (operator, jobs) that may only use the internal endpoints.

    ``name`` is one of :data:`mesial.api.services.ingest.SERVICES`, bound to one organization
    or platform-wide as that service is: it decides which audit events the key may write.
    ``commit`` as for :func:`issue_member_key`."""
    grant_for(name, bound=org_id is not None)
    return await _issue(org_id, Role.service, None, commit, subject=name)


async def revoke_key(org_id: str, key_id: str) -> ApiKey:
    key = await ApiKey.get_or_none(id=key_id, org_id=org_id) if OPAQUE_ID_RE.fullmatch(key_id) else None
    if key is None:
        raise NotFound("key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await key.save(update_fields=["revoked_at"])
    return key


async def disable_member(org_id: str, member_id: str) -> Member:
    member = await Member.get_or_none(id=member_id, org_id=org_id) if OPAQUE_ID_RE.fullmatch(member_id) else None
    if member is None:
        raise NotFound("member not found")
    if member.disabled_at is None:
        member.disabled_at = utcnow()
        await member.save(update_fields=["disabled_at"])
    return member
