"""Credentials: API keys (hashed at rest, shown once) and OIDC bearer JWTs.

An API key reads ``mesial_<prefix>_<secret>``: ``mesial_`` lets secret scanners spot
it, the 12-hex-digit prefix identifies the key row, the secret is 256 random bits
(base64url) of which only the SHA-256 is stored. A fast hash is enough: the secret is
random and long, not a password. Each request reads the key row, so expiry and
revocation apply to the very next request.

An OIDC token is verified against the configured JWKS (issuer, audience, expiry,
signature with RS256/ES256/EdDSA only); its claims name the organization and the role.
The member it maps to is kept per (organization, ``sub``); disabling the member
revokes the token at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from starlette.datastructures import Headers
from tortoise.backends.base.client import BaseDBAsyncClient

from mesial.api.errors import Unauthenticated
from mesial.api.models import ApiKey, Member, Organization
from mesial.api.types import Principal, Role, new_id, utcnow
from mesial.common.settings import ApiSettings
from mesial.common.tenancy import ORG_NAME_RE

KEY_RE = re.compile(r"^mesial_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
JWT_ALGORITHMS = ["RS256", "ES256", "EdDSA"]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_key(
    *,
    member: Member,
    role: Role,
    org_id: str | None,
    ttl: timedelta | None = None,
    key_id: str | None = None,
    using_db: BaseDBAsyncClient | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``member``: the row and the plaintext (shown once, never stored).

    ``key_id`` is the id chosen beforehand (by the audit event that records the issuance), a new one
    if not given; ``using_db`` the connection of the transaction that makes it."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    row = await ApiKey.create(
        using_db=using_db,
        id=key_id or new_id("key"),
        prefix=prefix,
        secret_hash=hash_secret(secret),
        member_id=member.id,
        org_id=org_id,
        role=role.value,
        created_at=now,
        expires_at=now + ttl if ttl else None,
    )
    return row, f"mesial_{prefix}_{secret}"


async def new_member(
    org_id: str | None, role: Role, subject: str | None = None, *, using_db: BaseDBAsyncClient | None = None
) -> Member:
    return await Member.create(
        using_db=using_db,
        id=new_id("mem"),
        org_id=org_id,
        subject=subject or new_id("sub"),
        role=role.value,
        created_at=utcnow(),
    )


def credential_of(headers: Mapping[str, str]) -> str | None:
    """The bearer token of a request's headers (Starlette's ``Headers``: every value of a repeated name).

    More than one ``Authorization`` header is refused: proxies and frameworks disagree on which
    one counts, so a bad credential beside a good one must not pass as either."""
    values = headers.getlist("authorization") if isinstance(headers, Headers) else [headers.get("authorization", "")]
    if len(values) > 1:
        raise Unauthenticated("more than one Authorization header")
    scheme, _, token = (values[0] if values else "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


_KEY_QUERY = (
    "SELECT k.id, k.secret_hash, k.role, k.org_id, k.expires_at, k.revoked_at, m.id AS member_id, "
    "m.subject, m.disabled_at, o.name AS org_name FROM api_keys k JOIN members m ON m.id = k.member_id "
    "LEFT JOIN organizations o ON o.id = k.org_id WHERE k.prefix = {param}"
)


async def _key_row(prefix: str) -> dict[str, Any] | None:
    """The key, its member and its organization in one round trip (every request pays it)."""
    connection = ApiKey._meta.db
    param = "?" if "sqlite" in type(connection).__module__ else "$1"
    rows = await connection.execute_query_dict(_KEY_QUERY.format(param=param), [prefix])
    return dict(rows[0]) if rows else None


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))  # SQLite returns text
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def authenticate_key(token: str) -> Principal:
    match = KEY_RE.fullmatch(token)
    if match is None:
        raise Unauthenticated("invalid credential")
    row = await _key_row(match.group(1))
    # Compare even when the row is missing, so timing does not tell which prefixes exist.
    expected = row["secret_hash"] if row is not None else "0" * 64
    if not hmac.compare_digest(expected, hash_secret(match.group(2))) or row is None:
        raise Unauthenticated("invalid credential")
    if row["revoked_at"] is not None or row["disabled_at"] is not None:
        raise Unauthenticated("credential revoked")
    expires = _when(row["expires_at"])
    if expires is not None and expires <= utcnow():
        raise Unauthenticated("credential expired")
    if row["org_id"] is not None and row["org_name"] is None:
        raise Unauthenticated("invalid credential")
    role = Role(row["role"])
    actor = f"service:{row['subject']}" if role is Role.service else f"key:{row['id']}"
    return Principal(actor, row["member_id"], role, row["org_id"], row["org_name"], key_id=row["id"])


async def actor_active(actor: str) -> bool:
    """Whether the key or member behind an actor id may still act (revocation reaches links too)."""
    kind, _, ident = actor.partition(":")
    if kind == "key":
        key = await ApiKey.get_or_none(id=ident)
        if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= utcnow()):
            return False
        member = await Member.get_or_none(id=key.member_id)
    elif kind == "oidc":
        member = await Member.get_or_none(id=ident)
    else:
        return False
    return member is not None and member.disabled_at is None


class OidcVerifier:
    """Verifies bearer JWTs against a JWKS (URL, cached for ``oidc_jwks_ttl_s``, or a file)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._keys: dict[str, Any] = {}
        self._fetched = 0.0  # when the keys were last loaded
        self._attempted = float("-inf")  # when a load was last tried (it may have failed)
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.oidc_issuer and self.settings.oidc_jwks)

    def _load_jwks(self) -> dict[str, Any]:
        source = self.settings.oidc_jwks
        if source.startswith(("https://", "http://")):
            client = jwt.PyJWKClient(source, cache_jwk_set=False, timeout=5)
            data = client.fetch_data()
        else:
            data = json.loads(Path(source).read_text())
        keys: dict[str, Any] = {}
        for entry in jwt.PyJWKSet.from_dict(data).keys:
            keys[entry.key_id or ""] = entry
        return keys

    async def _key(self, kid: str) -> Any:
        """The JWKS key ``kid``: keys are reloaded when stale or when a kid is unknown, but not more
        often than ``oidc_jwks_min_refetch_s`` (unknown kids are cached as unknown until then)."""
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched > self.settings.oidc_jwks_ttl_s
            due = now - self._attempted >= self.settings.oidc_jwks_min_refetch_s
            if (stale or kid not in self._keys) and due:
                self._attempted = now
                try:
                    self._keys = await asyncio.to_thread(self._load_jwks)
                    self._fetched = now
                except Exception as exc:
                    if stale:
                        raise Unauthenticated("identity provider keys unavailable") from exc
            elif stale:
                raise Unauthenticated("identity provider keys unavailable")
        if kid not in self._keys:
            raise Unauthenticated("invalid credential")
        return self._keys[kid]

    async def authenticate(self, token: str) -> Principal:
        if not self.enabled:
            raise Unauthenticated("invalid credential")
        try:
            header = jwt.get_unverified_header(token)
            key = await self._key(str(header.get("kid", "")))
            claims = jwt.decode(
                token,
                key=key,
                algorithms=JWT_ALGORITHMS,
                audience=self.settings.oidc_audience or None,
                issuer=self.settings.oidc_issuer,
                options={"require": ["exp", "iss", "sub"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid credential") from exc
        org_name = claims.get(self.settings.oidc_org_claim)
        role_text = claims.get(self.settings.oidc_role_claim)
        try:
            role = Role(str(role_text))
        except ValueError:
            raise Unauthenticated("token carries no valid role") from None
        if role in (Role.platform_admin, Role.service):
            raise Unauthenticated("token role not accepted over OIDC")
        # Claims are client text: only an organization name's shape and a printable subject reach the database.
        known = isinstance(org_name, str) and ORG_NAME_RE.fullmatch(org_name) is not None
        org = await Organization.get_or_none(name=org_name) if known else None
        if org is None:
            raise Unauthenticated("token names no known organization")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 240 or not sub.isprintable():
            raise Unauthenticated("token subject is not usable")
        subject = f"oidc:{sub}"
        member = await Member.get_or_none(org_id=org.id, subject=subject)
        if member is None:
            member = await Member.create(
                id=new_id("mem"), org_id=org.id, subject=subject, role=role.value, created_at=utcnow()
            )
        elif member.disabled_at is not None:
            raise Unauthenticated("credential revoked")
        elif member.role != role.value:
            member.role = role.value
            await member.save(update_fields=["role"])
        return Principal(f"oidc:{member.id}", member.id, role, org.id, str(org.name))


async def authenticate(token: str, oidc: OidcVerifier) -> Principal:
    """The principal of a bearer token: an API key or an OIDC JWT."""
    if token.startswith("mesial_"):
        return await authenticate_key(token)
    if token.count(".") == 2:
        return await oidc.authenticate(token)
    raise Unauthenticated("invalid credential")


def expiry_from(days: int | None) -> timedelta | None:
    return timedelta(days=days) if days else None


__all__ = ["OidcVerifier", "authenticate", "expiry_from", "issue_key", "new_member"]
