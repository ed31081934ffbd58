"""Organizations, members and API keys (platform-admin and org-admin operations)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError as DbIntegrityError
from tortoise.queryset import QuerySet

from mesial.api.audit.collector import Change, Commit, made
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
# Tries of one retention change that others keep overtaking (a try is undone only when another is made)
RETENTION_TRIES = 10

T = TypeVar("T")
M = TypeVar("M", ApiKey, Member)


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


async def create_org(name: str, keys: TenantKeys | None, retention_days: int, commit: Commit) -> Organization:
    """The organization's Vault key, then its row, made in ``commit``'s transaction (the one appending
    the ``org.created`` that names it): if that append fails there is no row. The Vault key may stay;
    making it again (the same create asked again) is a no-op."""
    validate_org_name(name)
    _check(RETENTION_DAYS, retention_days)
    if await Organization.exists(name=name):
        raise Conflict("organization exists")
    if keys is not None:
        await asyncio.to_thread(keys.ensure_transit)
        await asyncio.to_thread(keys.ensure_key, name)
    org_id = new_id("org")  # chosen first: the event that records the organization names it

    async def make(conn: BaseDBAsyncClient) -> Organization:
        try:
            return await Organization.create(
                using_db=conn, id=org_id, name=name, retention_days=retention_days, created_at=utcnow()
            )
        except DbIntegrityError:
            raise Conflict("organization exists") from None

    return await _made(make, commit, org_id)


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

    async def make(conn: BaseDBAsyncClient) -> tuple[ApiKey, str]:
        if allowed is not None:
            await allowed(conn)
        member = await new_member(org_id, role, subject, using_db=conn)
        return await issue_key(member=member, role=role, org_id=org_id, ttl=ttl, key_id=key_id, using_db=conn)

    return await _made(make, commit, key_id)


async def _made(
    change: Callable[[BaseDBAsyncClient], Awaitable[T]], commit: Commit | None, resource_id: str | None = None
) -> T:
    """What ``change`` returns, run in ``commit``'s transaction (the one appending the event that
    records it, naming ``resource_id`` if given) or, without one, in a transaction of its own."""
    return await made(change, commit or _unrecorded, resource_id)


async def _unrecorded(change: Change, *, resource_id: str | None = None) -> None:
    """A :class:`Commit` appending no event (tests, scripts): what the change makes is still made at once."""
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


async def set_break_glass(org_id: str, allowed: bool, commit: Commit) -> Organization:
    """Allow or forbid break-glass keys into ``org_id``, in ``commit``'s transaction (the one appending
    ``org.break_glass_changed``): if that append fails the setting is as it was."""
    return await _made(_setting(org_id, break_glass_allowed=allowed), commit, org_id)


async def set_retention(org_id: str, days: int, commit: Callable[[int], Commit]) -> Organization:
    """Keep ``org_id``'s scans and results ``days`` days, set in the transaction of ``commit(previous)``
    (the one appending ``org.retention_changed`` naming the days it replaces): if that append fails
    the setting is as it was.

    A commit's event is made before its transaction, so ``previous`` is read first and then read
    again in that transaction under the row's lock (``SELECT ... FOR UPDATE`` on PostgreSQL; on
    SQLite the write transaction holds the database's write lock): if another change replaced it
    meanwhile, that transaction is undone (its event too) and the change is made again naming the
    value read under the lock. Of several changes at once each event names the value it replaced
    (their previous and new days chain); each undone try is another change made, and a change still
    overtaken after :data:`RETENTION_TRIES` tries is a Conflict."""
    previous = (await Organization.get(id=org_id)).retention_days
    for _ in range(RETENTION_TRIES):
        try:
            return await _made(_retention(org_id, previous, days), commit(previous), org_id)
        except _Overtaken as overtaken:
            previous = overtaken.days
    raise Conflict("the retention is being changed by other requests: try again")


class _Overtaken(Conflict):
    """The retention another change set between its reading and the row's lock (``days``, what it is now)."""

    def __init__(self, days: int) -> None:
        super().__init__("the retention changed meanwhile")
        self.days = days


def _retention(org_id: str, previous: int, days: int) -> Callable[[BaseDBAsyncClient], Awaitable[Organization]]:
    """The change setting the organization's retention to ``days`` if, read under the row's lock, it
    is still ``previous`` (:class:`_Overtaken` otherwise): the row as it is then."""

    async def change(conn: BaseDBAsyncClient) -> Organization:
        row = await Organization.filter(id=org_id).using_db(conn).select_for_update().get()
        if row.retention_days != previous:
            raise _Overtaken(row.retention_days)
        row.retention_days = days
        await row.save(using_db=conn, update_fields=["retention_days"])
        return row

    return change


def _setting(org_id: str, **values: Any) -> Callable[[BaseDBAsyncClient], Awaitable[Organization]]:
    """The change setting ``values`` on the organization's row: the row as it is then."""

    async def change(conn: BaseDBAsyncClient) -> Organization:
        await Organization.filter(id=org_id).using_db(conn).update(**values)
        return await Organization.filter(id=org_id).using_db(conn).get()

    return change


async def issue_service_key(name: str, org_id: str | None = None, commit: Commit | None = None) -> tuple[ApiKey, str]:
    """A key for a service (operator, jobs) that may only use the internal endpoints.

    ``name`` is one of :data:`mesial.api.services.ingest.SERVICES`, bound to one organization
    or platform-wide as that service is: it decides which audit events the key may write.
    ``commit`` as for :func:`issue_member_key`."""
    grant_for(name, bound=org_id is not None)
    return await _issue(org_id, Role.service, None, commit, subject=name)


async def revoke_key(org_id: str, key_id: str, commit: Commit) -> ApiKey:
    """Revoke the organization's key ``key_id`` in ``commit``'s transaction (the one appending
    ``key.revoked``): if that append fails the key still works. A key revoked already stays as it
    was; one the organization does not have is NotFound, refused in that transaction."""
    return await _made(_stamp(ApiKey, org_id, key_id, "key", "revoked_at"), commit)


async def disable_member(org_id: str, member_id: str, commit: Commit) -> Member:
    """Disable the organization's member ``member_id`` (its keys and tokens stop working) as
    :func:`revoke_key` revokes a key, in the transaction appending ``member.disabled``."""
    return await _made(_stamp(Member, org_id, member_id, "member", "disabled_at"), commit)


def _stamp(
    model: type[M], org_id: str, row_id: str, what: str, field: str
) -> Callable[[BaseDBAsyncClient], Awaitable[M]]:
    """The change stamping the organization's row ``row_id`` of ``model`` with the time at ``field``
    unless stamped already (NotFound naming ``what`` when it has no such row): the row as it is then."""

    async def change(conn: BaseDBAsyncClient) -> M:
        row = await _found(model.filter(org_id=org_id).using_db(conn), row_id, what)
        if getattr(row, field) is None:
            setattr(row, field, utcnow())
            await row.save(using_db=conn, update_fields=[field])
        return row

    return change


async def _found(rows: QuerySet[M], row_id: str, what: str) -> M:
    """The row ``row_id`` of ``rows`` (an organization's), or NotFound naming ``what``."""
    row = await rows.filter(id=row_id).first() if OPAQUE_ID_RE.fullmatch(row_id) else None
    if row is None:
        raise NotFound(f"{what} not found")
    return row
