"""tortoise-orm models of the tenant API. The schema itself is made by ``api/migrations``.

No model leaves ``mesial.api``: services hand plain dicts to routes and to other
components. Every row of tenant data carries ``org_id``; it is read only through the
scoped accessor (:mod:`mesial.api.services.scope`).
"""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.models import Model


class Organization(Model):
    id = fields.CharField(primary_key=True, max_length=40)
    name = fields.CharField(max_length=64, unique=True)
    retention_days = fields.IntField(default=90)
    created_at = fields.DatetimeField()
    # whether the platform admin may issue a break-glass org-admin key once the organization lost its own
    break_glass_allowed = fields.BooleanField(default=True)

    class Meta:
        table = "organizations"


class Member(Model):
    """A person or service acting for an organization (``org_id`` empty: platform level)."""

    id = fields.CharField(primary_key=True, max_length=40)
    org_id = fields.CharField(max_length=40, null=True)
    subject = fields.CharField(max_length=255)  # opaque: an OIDC ``sub`` or a generated id
    role = fields.CharField(max_length=32)
    created_at = fields.DatetimeField()
    disabled_at = fields.DatetimeField(null=True)

    class Meta:
        table = "members"


class ApiKey(Model):
    id = fields.CharField(primary_key=True, max_length=40)
    prefix = fields.CharField(max_length=32, unique=True)  # the public, identifying part
    secret_hash = fields.CharField(max_length=64)  # SHA-256 of the 256-bit secret
    member_id = fields.CharField(max_length=40)
    org_id = fields.CharField(max_length=40, null=True)
    role = fields.CharField(max_length=32)
    created_at = fields.DatetimeField()
    expires_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_keys"


class Scan(Model):
    id = fields.CharField(primary_key=True, max_length=40)
    org_id = fields.CharField(max_length=40)
    created_by = fields.CharField(max_length=40)
    kind = fields.CharField(max_length=16)
    format = fields.CharField(max_length=16)
    size = fields.BigIntField()
    sha256 = fields.CharField(max_length=64)
    triangles = fields.BigIntField()
    legal_hold = fields.BooleanField(default=False)
    created_at = fields.DatetimeField()

    class Meta:
        table = "scans"


class Job(Model):
    id = fields.CharField(primary_key=True, max_length=40)
    org_id = fields.CharField(max_length=40)
    created_by = fields.CharField(max_length=40)
    upper_id = fields.CharField(max_length=40)
    lower_id = fields.CharField(max_length=40)
    bite_ids: Any = fields.JSONField()
    options: Any = fields.JSONField()
    state = fields.CharField(max_length=16)
    progress = fields.FloatField(default=0.0)
    metrics: Any = fields.JSONField()
    message = fields.CharField(max_length=500, default="")
    # the alignment's verdict, apart from the job's state: ok | not_confident | invalid_input | ''
    result = fields.CharField(max_length=16, default="")
    created_at = fields.DatetimeField()
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "jobs"


class Artifact(Model):
    id = fields.CharField(primary_key=True, max_length=40)
    org_id = fields.CharField(max_length=40)
    job_id = fields.CharField(max_length=40)
    name = fields.CharField(max_length=128)
    size = fields.BigIntField()
    sha256 = fields.CharField(max_length=64)
    created_at = fields.DatetimeField()

    class Meta:
        table = "artifacts"


class LegalHold(Model):
    """History of legal holds: one row per placement or release."""

    id = fields.CharField(primary_key=True, max_length=40)
    org_id = fields.CharField(max_length=40)
    scan_id = fields.CharField(max_length=40)
    placed = fields.BooleanField()
    actor = fields.CharField(max_length=64)
    at = fields.DatetimeField()

    class Meta:
        table = "legal_holds"


class AuditEventRow(Model):
    """One event in its tenant's chain (append-only: the database refuses UPDATE and DELETE)."""

    id = fields.BigIntField(primary_key=True)
    tenant = fields.CharField(max_length=64)
    sequence = fields.BigIntField()
    time = fields.CharField(max_length=40)  # canonical UTC text, exactly as hashed
    actor = fields.CharField(max_length=128)
    source_ip = fields.CharField(max_length=64)
    action = fields.CharField(max_length=64)
    resource_type = fields.CharField(max_length=32)
    resource_id = fields.CharField(max_length=64)
    outcome = fields.CharField(max_length=16)
    request_id = fields.CharField(max_length=64)
    details = fields.TextField()  # canonical JSON
    previous_hash = fields.CharField(max_length=64)
    hash = fields.CharField(max_length=64)

    class Meta:
        table = "audit_events"


class AuditCheckpoint(Model):
    """A signed chain head (append-only)."""

    id = fields.BigIntField(primary_key=True)
    tenant = fields.CharField(max_length=64)
    sequence = fields.BigIntField()
    head_hash = fields.CharField(max_length=64)
    time = fields.CharField(max_length=40)
    signature = fields.TextField()

    class Meta:
        table = "audit_checkpoints"
