"""Request and response bodies (pydantic): validation and the OpenAPI document come from here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesial.api.services.scans import ScanKind
from mesial.api.types import KEY_TTL_DAYS, RETENTION_DAYS, Role
from mesial.common.contract import CONTACT_THRESHOLD_MM

Id = Annotated[str, Field(pattern=r"^[a-z]{3}_[0-9a-f]{24}$", description="opaque id")]
# An organization's name: a DNS label once prefixed (its namespace is mesial-org-<name>).
OrgName = Annotated[str, Field(min_length=1, max_length=52, pattern=r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")]


# Ingested event details: short machine values only (ids, counts, hashes, reasons), no free text.
DetailKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
DetailText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{0,128}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


class Error(BaseModel):
    error: ErrorBody


class OrgCreate(Strict):
    name: OrgName
    retention_days: int = Field(90, ge=RETENTION_DAYS.min, le=RETENTION_DAYS.max)


class Retention(Strict):
    retention_days: int = Field(
        ge=RETENTION_DAYS.min,
        le=RETENTION_DAYS.max,
        description="days scans and results are kept (legal holds excepted)",
    )


class BreakGlass(Strict):
    allowed: bool = Field(
        description="whether the platform admin may issue a one-day org-admin key once the organization "
        "has no active org-admin left (audited as key.break_glass in the organization's chain)"
    )


class Org(BaseModel):
    id: str
    name: str
    retention_days: int
    break_glass_allowed: bool
    created_at: str


class OrgList(BaseModel):
    items: list[Org]


class KeyCreate(Strict):
    role: Literal["org-admin", "clinician", "technician", "auditor"]
    expires_in_days: int | None = Field(None, ge=KEY_TTL_DAYS.min, le=KEY_TTL_DAYS.max)


class PlatformKeyCreate(KeyCreate):
    break_glass: bool = Field(
        False,
        description="issue a one-day org-admin key into an organization that has no active org-admin left "
        "(refused if it forbade break-glass); without it, only an organization's first key is issued",
    )


class Key(BaseModel):
    id: str
    prefix: str
    role: str
    member_id: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class NewKey(Key):
    key: str = Field(description="the API key; shown once, never again")


class KeyList(BaseModel):
    items: list[Key]


class Me(BaseModel):
    actor: str
    role: Role
    organization: str | None


class UploadQuery(Strict):
    kind: ScanKind


class Page(Strict):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)


class Scan(BaseModel):
    id: str
    kind: str
    format: str
    size: int
    sha256: str
    triangles: int
    legal_hold: bool
    created_at: str


class ScanList(BaseModel):
    items: list[Scan]
    next_cursor: str | None


class JobOptions(Strict):
    contact_threshold_mm: float = Field(
        0.1, ge=CONTACT_THRESHOLD_MM[0], le=CONTACT_THRESHOLD_MM[1], description="occlusal contact distance, mm"
    )
    optimise: bool = Field(True, description="correct bite-through after registration")


class JobCreate(Strict):
    upper: Id
    lower: Id
    bites: list[Id] = Field(min_length=1, max_length=2)
    options: JobOptions = Field(default_factory=JobOptions)


class Job(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    metrics: dict[str, Any]
    message: str
    result: Literal["", "ok", "not_confident", "invalid_input"] = Field(
        description="the alignment's verdict ('' until the job has run): a job that ran to the end "
        "succeeded even when its alignment is not_confident; its report says why"
    )
    upper: str
    lower: str
    bites: list[str]
    created_at: str
    started_at: str | None
    finished_at: str | None


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None


class Artifact(BaseModel):
    name: str
    size: int
    sha256: str
    created_at: str


class ArtifactList(BaseModel):
    items: list[Artifact]


class Link(BaseModel):
    url: str
    expires_at: str


def utc(value: datetime) -> datetime:
    """A time from a query or the command line: naive ones are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: datetime | None = Field(None, alias="from")
    to: datetime | None = None

    @model_validator(mode="after")
    def _in_order(self) -> ExportQuery:
        """``from`` after ``to`` selects nothing: a signed empty export an auditor could take for an empty
        chain. Naive times are UTC, as the export reads them."""
        if self.from_ is not None and self.to is not None and utc(self.from_) > utc(self.to):
            raise ValueError("from is after to: the range selects no event")
        return self


class IngestEvent(Strict):
    tenant: str = Field(min_length=1, max_length=64, pattern=r"^(_platform|[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?)$")
    action: str = Field(min_length=3, max_length=64, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
    resource_type: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    resource_id: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")
    outcome: Literal["success", "denied", "failure"] = "success"
    time: datetime | None = None
    details: dict[DetailKey, DetailText | int | float | bool] = Field(default_factory=dict, max_length=16)


class Ingested(BaseModel):
    tenant: str
    sequence: int
    hash: str


class JobReport(Strict):
    state: Literal["running", "succeeded", "failed"]
    tenant: OrgName = Field(
        description="the organization whose namespace ran the job; a report for another's job is refused (404)"
    )
    message: str = Field("", max_length=256)


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
