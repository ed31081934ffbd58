"""The job contract and the object-key layout: one module for the API, the operator, the Job
entrypoint (``mesial job run``) and retention.

**Object-key layout.** Every object of a tenant lives under ``tenants/<org>/``
(:func:`mesial.common.tenancy.tenant_prefix`); below it the platform writes only keys
built here::

    scans/<scan-id>                    an uploaded scan (sealed with the tenant key)
    jobs/<job-id>/artifacts/<name>     an output of a job
    jobs/<job-id>/progress.json        the job's progress document (below)

:func:`classify_key` maps any key below a tenant prefix to what retention sweeps it as:
``scans`` (a scan's objects), ``results`` (everything of a job) or ``other`` (a key outside
the layout: still the tenant's data, so retention sweeps it too; nothing of a tenant is
left out of the promise because nobody listed its prefix).

**One job spec.** :class:`JobSpec` is what a job is: tenant, job id, scan ids and the
alignment options. The API builds it from a request, the operator from a ScanJob
(:meth:`JobSpec.from_scanjob`, the reverse of :meth:`JobSpec.scanjob_spec`), and ``mesial
job run`` from its arguments (:meth:`JobSpec.argv`); each validates the same way.
:func:`job_environment` is the environment a local job runs with; the operator's pods get
the same ``MESIAL_*`` names, with Kubernetes auth and the store Secret (``build_job``).

**One progress model.** A tenant pod may not patch its ScanJob's status (its
ServiceAccount has no such right, on purpose). Instead the Job writes
``jobs/<job-id>/progress.json`` through the
:class:`~mesial.common.objectstore.ObjectStore` (sealed with the tenant key, like
everything else of that tenant), and the operator and the API read it. The document is
untrusted input: :func:`parse_progress` checks every field, bounds every size and strips
anything that is not a plain short text, so that a hostile or broken job cannot inject
markup, control characters or megabytes into the status that platform engineers read.

Document (JSON object)::

    {"state": "running", "stage": "registration", "percent": 40, "message": "ICP converged",
     "result_status": "", "metrics": {"rmse_mm": 0.08},
     "artifacts": ["jobs/<job-id>/artifacts/report.json"]}
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mesial.common.errors import InputError, InvalidObjectKey, ObjectNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.tenancy import validate_org_name, validate_relative_key

MAX_DOCUMENT_BYTES = 16 * 1024
MAX_METRICS = 32
MAX_ARTIFACTS = 32
MAX_TEXT = 256
# What an alignment can conclude (result.json `status`).
RESULTS = ("ok", "not_confident", "invalid_input")
# Where a job is (the Job entrypoint's own word; Kubernetes and the API keep theirs).
STATES = ("running", "succeeded", "failed")
# Exit codes of a job (`mesial job run`): 0 the alignment ran (its verdict is `result_status`,
# confident or not), 2 invalid input (final: no retry can fix the scans), 1 the job itself
# failed (may be transient, retried).
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
# The contact threshold a job accepts (mm): the API, the ScanJob CRD and `mesial job run` agree.
CONTACT_THRESHOLD_MM = (0.01, 2.0)
DEFAULT_CONTACT_THRESHOLD_MM = 0.1
# A scan or job id: one key segment (the API's ids are `scn_`/`job_` + 24 hex digits).
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
_UNSAFE_ID_RE = re.compile(r"[^A-Za-z0-9_.:-]")
_SAFE_TEXT_RE = re.compile(r"[^\w .,:;=+\-()/%#@'\[\]]", re.UNICODE)

SCANS, JOBS = "scans/", "jobs/"
ARTIFACTS_DIR, PROGRESS_NAME = "artifacts/", "progress.json"


# -- object-key layout ---------------------------------------------------------------------
def valid_id(value: object, what: str = "id") -> str:
    """``value`` if it is a scan or job id (one key segment), else ``InputError``."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise InputError(f"invalid {what} {sanitize_text(value, 40)!r}")
    return value


def scan_key(scan_id: str) -> str:
    """The object key (below the tenant prefix) of an uploaded scan."""
    return f"{SCANS}{valid_id(scan_id, 'scan id')}"


def job_prefix(job_id: str) -> str:
    """The prefix (below the tenant prefix) of everything a job writes."""
    return f"{JOBS}{valid_id(job_id, 'job id')}/"


def artifacts_prefix(job_id: str) -> str:
    return job_prefix(job_id) + ARTIFACTS_DIR


def artifact_key(job_id: str, name: str) -> str:
    """The object key of a job's artifact ``name`` (one segment: ``report.json``)."""
    if not isinstance(name, str) or not ARTIFACT_NAME_RE.fullmatch(name):
        raise InputError(f"invalid artifact name {sanitize_text(name, 40)!r}")
    return artifacts_prefix(job_id) + name


def artifact_name(job_id: str, key: str) -> str | None:
    """The artifact name of ``key`` if it is one of the job's artifacts, else None."""
    prefix = artifacts_prefix(job_id)
    name = key[len(prefix) :] if key.startswith(prefix) else ""
    return name if ARTIFACT_NAME_RE.fullmatch(name) else None


def progress_key(job_id: str) -> str:
    """The object key (below the tenant prefix) of a job's progress document."""
    return job_prefix(job_id) + PROGRESS_NAME


class KeyClass(NamedTuple):
    """What a key below a tenant prefix is, for retention: kind, receipt resource type and id."""

    kind: str  # scans | results | other
    resource_type: str  # scan | job | object
    resource_id: str


def classify_key(relative: str) -> KeyClass:
    """Where ``relative`` (a key below ``tenants/<org>/``) sits in the layout.

    ``scans/<id>[/...]`` is a scan, ``jobs/<id>/...`` a job's result; anything else is
    ``other`` (its first segment is its resource id): not the platform's layout, still the
    tenant's, swept all the same."""
    parts = relative.split("/")
    if len(parts) >= 2 and ID_RE.fullmatch(parts[1]):
        if parts[0] == SCANS[:-1]:
            return KeyClass("scans", "scan", parts[1])
        if parts[0] == JOBS[:-1]:
            return KeyClass("results", "job", parts[1])
    return KeyClass("other", "object", _UNSAFE_ID_RE.sub("_", parts[0])[:64] or "-")


# -- the job spec ---------------------------------------------------------------------------
def _threshold(value: object) -> float:
    low, high = CONTACT_THRESHOLD_MM
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"the contact threshold must be a number from {low} to {high} mm")
    return float(value)


@dataclass(frozen=True)
class JobSpec:
    """One alignment job: its tenant, id, scans and options, validated on construction."""

    org: str
    job_id: str
    upper: str
    lower: str
    bites: tuple[str, ...]
    contact_threshold_mm: float = DEFAULT_CONTACT_THRESHOLD_MM
    optimise: bool = True

    def __post_init__(self) -> None:
        try:
            validate_org_name(self.org)
        except InputError as exc:
            raise InputError(str(exc)) from None
        valid_id(self.job_id, "job id")
        for value in (self.upper, self.lower, *self.bites):
            valid_id(value, "scan id")
        if not 1 <= len(self.bites) <= 2:
            raise InputError("a job takes one or two bite scans")
        if len({self.upper, self.lower, *self.bites}) != 2 + len(self.bites):
            raise InputError("scan ids must be distinct: upper, lower and one or two bites")
        object.__setattr__(self, "contact_threshold_mm", _threshold(self.contact_threshold_mm))
        if not isinstance(self.optimise, bool):
            raise InputError("optimise must be true or false")

    @classmethod
    def from_options(
        cls,
        org: str,
        job_id: str,
        upper: str,
        lower: str,
        bites: tuple[str, ...] | list[str],
        options: Mapping[str, Any],
    ) -> JobSpec:
        """From the API's job options (``contact_threshold_mm``, ``optimise``)."""
        return cls(
            org, job_id, upper, lower, tuple(bites),
            options.get("contact_threshold_mm", DEFAULT_CONTACT_THRESHOLD_MM), options.get("optimise", True),
        )  # fmt: skip

    def options(self) -> dict[str, Any]:
        return {"contact_threshold_mm": self.contact_threshold_mm, "optimise": self.optimise}

    @classmethod
    def from_scanjob(cls, org: str, job_id: str, spec: Mapping[str, Any]) -> JobSpec:
        """From a ScanJob's ``spec`` (``crds/scanjob.yaml``; re-validated: the spec is untrusted)."""
        scans = spec.get("scans") or {}
        options = spec.get("options") or {}
        bites = scans.get("bites") or []
        if not isinstance(bites, list):
            raise InputError("scans.bites must be a list")
        return cls(
            org, job_id, valid_id(scans.get("upper"), "scan id"), valid_id(scans.get("lower"), "scan id"), tuple(bites),
            options.get("contactThresholdMm", DEFAULT_CONTACT_THRESHOLD_MM), options.get("optimiseBite", True),
        )  # fmt: skip

    def scanjob_spec(self) -> dict[str, Any]:
        """The ScanJob ``spec`` of this job (what :meth:`from_scanjob` reads back)."""
        return {
            "scans": {"upper": self.upper, "lower": self.lower, "bites": list(self.bites)},
            "options": {"contactThresholdMm": self.contact_threshold_mm, "optimiseBite": self.optimise},
        }

    def argv(self) -> list[str]:
        """The arguments of ``mesial job run`` (its click options parse exactly these)."""
        args = ["--org", self.org, "--job-id", self.job_id, "--upper", self.upper, "--lower", self.lower]
        for bite in self.bites:
            args += ["--bite", bite]
        args += ["--contact-threshold", repr(self.contact_threshold_mm)]
        return args + ([] if self.optimise else ["--no-optimise"])


def job_environment(settings: Settings) -> dict[str, str]:
    """The environment of a local job: its settings as ``MESIAL_*`` variables over a minimal base."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    vault, store = settings.vault, settings.store
    env.update(
        {
            "MESIAL_MODE": settings.mode.value,
            "MESIAL_LOG_LEVEL": settings.log_level,
            "MESIAL_VAULT__ADDR": vault.addr,
            "MESIAL_VAULT__TOKEN": vault.token.get_secret_value(),
            "MESIAL_VAULT__TRANSIT_MOUNT": vault.transit_mount,
            "MESIAL_STORE__ENDPOINT_URL": store.endpoint_url,
            "MESIAL_STORE__BUCKET": store.bucket,
            "MESIAL_STORE__REGION": store.region,
            "MESIAL_STORE__ACCESS_KEY": store.access_key.get_secret_value(),
            "MESIAL_STORE__SECRET_KEY": store.secret_key.get_secret_value(),
            "MESIAL_STORE__CHUNK_SIZE": str(store.chunk_size),
            "MESIAL_STORE__VERIFY_TLS": str(store.verify_tls).lower(),
        }
    )
    return env


# -- the progress model ---------------------------------------------------------------------
def sanitize_text(text: object, limit: int = MAX_TEXT) -> str:
    """A single short line of safe characters (anything else becomes '?')."""
    value = " ".join(str(text).split())
    return _SAFE_TEXT_RE.sub("?", value)[:limit]


@dataclass(frozen=True)
class JobProgress:
    """A job's progress document (the only one: the Job entrypoint writes it, everyone reads it)."""

    state: str = "running"  # one of STATES
    stage: str = ""
    percent: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    result: str = ""  # the alignment's verdict once known: one of RESULTS

    def as_document(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "stage": self.stage,
            "percent": self.percent,
            "result_status": self.result,
            "message": self.message,
            "metrics": dict(self.metrics),
            "artifacts": list(self.artifacts),
        }


def parse_progress(raw: bytes) -> JobProgress:
    """Validate and sanitize a progress document; ``InputError`` if it is not one."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InputError(f"progress document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("progress document is not JSON") from exc
    if not isinstance(doc, dict):
        raise InputError("progress document is not a JSON object")
    percent = doc.get("percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent):
        raise InputError("progress percent is not a number")
    metrics: dict[str, float] = {}
    raw_metrics = doc.get("metrics", {})
    if not isinstance(raw_metrics, dict):
        raise InputError("progress metrics is not an object")
    for name, value in list(raw_metrics.items())[:MAX_METRICS]:
        if (
            isinstance(name, str)
            and _NAME_RE.fullmatch(name)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            metrics[name] = float(value)
    artifacts: list[str] = []
    raw_artifacts = doc.get("artifacts", [])
    if not isinstance(raw_artifacts, list):
        raise InputError("progress artifacts is not a list")
    for item in raw_artifacts[:MAX_ARTIFACTS]:
        if isinstance(item, str):
            try:
                artifacts.append(validate_relative_key(item))
            except InvalidObjectKey:
                continue  # an artifact outside the tenant's keys is dropped, the rest kept
    state = doc.get("state", "running")
    return JobProgress(
        state=state if isinstance(state, str) and state in STATES else "running",
        stage=sanitize_text(doc.get("stage", ""), 64),
        percent=max(0, min(100, int(percent))),
        message=sanitize_text(doc.get("message", "")),
        metrics=metrics,
        artifacts=artifacts,
        result=result if isinstance(result := doc.get("result_status"), str) and result in RESULTS else "",
    )


async def write_progress(store: ObjectStore, org: str, job_id: str, progress: JobProgress) -> None:
    """What the Job entrypoint calls after each stage."""
    await store.put(org, progress_key(job_id), json.dumps(progress.as_document()).encode())


async def read_progress(store: ObjectStore, org: str, job_id: str) -> JobProgress | None:
    """The job's latest progress, or None if it has not reported yet."""
    try:
        raw = await store.read_bytes(org, progress_key(job_id))
    except ObjectNotFound:
        return None
    return parse_progress(raw)
