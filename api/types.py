"""Shared types of the API: roles, the authenticated principal, request-scoped state."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Role(enum.StrEnum):
    org_admin = "org-admin"  # keys, members, retention, legal holds, deletion
    clinician = "clinician"  # own cases
    technician = "technician"  # the organization's cases, no deletion
    auditor = "auditor"  # audit export only, no scan data
    platform_admin = "platform-admin"  # create organizations; no scan content
    service = "service"  # operator and jobs: the internal audit ingestion only


TENANT_ROLES = frozenset({Role.org_admin, Role.clinician, Role.technician, Role.auditor})
CASE_ROLES = frozenset({Role.org_admin, Role.clinician, Role.technician})


@dataclass(frozen=True)
class DayRange:
    """An inclusive range of days that every way in (API schema, ``mesial admin``, services) holds to."""

    min: int
    max: int
    what: str

    def check(self, days: int | None) -> None:
        """Raises :class:`ValueError` (the caller's error type wraps it) for a value outside the range."""
        if days is not None and not self.min <= days <= self.max:
            raise ValueError(f"{self.what} must be {self.min}-{self.max} days, not {days}")


# docs/api.md: PUT /v1/org/retention (1-36500); a key expires after 1-3650 days, or never (None).
RETENTION_DAYS = DayRange(1, 36500, "retention")
KEY_TTL_DAYS = DayRange(1, 3650, "a key's lifetime")


@dataclass(frozen=True)
class Principal:
    """Who is calling: derived from the credential only, never from the request."""

    actor: str  # "key:<id>" or "oidc:<member id>" or "service:<name>"
    member_id: str
    role: Role
    org_id: str | None
    org_name: str | None
    key_id: str | None = None


@dataclass
class AuditMark:
    """What a route tells the audit middleware about the action it is performing."""

    action: str
    resource_type: str
    resource_id: str = ""
    tenant: str | None = None
    actor: str = ""
    details: dict[str, str | int | float | bool] = field(default_factory=dict)
    recorded: bool = False  # appended by the route with its change (Call.commit): the middleware does not


def new_id(prefix: str) -> str:
    """An opaque id: a type prefix and 96 random bits (no meaning, nothing to guess)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


JSON = dict[str, Any]
