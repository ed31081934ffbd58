"""Audit events and the sink interface every component appends through.

An event records who did what to which resource, by opaque ids only: no PHI, no file
names, no labels. The API's audit collector (issue 5) stores events in per-tenant,
hash-chained, append-only tables and signs checkpoints; the operator and jobs send
theirs over its authenticated internal endpoint. Both sides speak :class:`AuditSink`.

Chain primitives live here too, so that the collector and the offline verifier
(``mesial audit verify``) compute the same hash from the same canonical encoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mesial.common.service_http import post_json, tls_context

Outcome = Literal["success", "denied", "failure"]
GENESIS_HASH = "0" * 64
PLATFORM_TENANT = "_platform"


@dataclass(frozen=True)
class AuditEvent:
    """One audited action, before the collector gives it a place in its tenant's chain."""

    tenant: str  # organization name, or PLATFORM_TENANT for platform-level actions
    actor: str  # user or API key id, or "service:<name>"
    action: str  # dotted verb, e.g. "scan.uploaded", "retention.deleted", "org.shredded"
    resource_type: str  # "scan", "job", "artifact", "organization", ...
    resource_id: str  # opaque id, never a name or a label
    outcome: Outcome = "success"
    source_ip: str = ""
    request_id: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, str | int | float | bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = self.time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return data


def canonical(record: dict[str, Any]) -> bytes:
    """The canonical encoding hashed into the chain: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous_hash: str, sequence: int, event: dict[str, Any]) -> str:
    """SHA-256 over the previous hash, the sequence number and the canonical event."""
    body = {**event, "sequence": sequence, "previous_hash": previous_hash}
    body.pop("hash", None)
    return hashlib.sha256(canonical(body)).hexdigest()


@runtime_checkable
class AuditSink(Protocol):
    """Where components append audit events (the collector, in-process or over HTTP)."""

    async def append(self, event: AuditEvent) -> None: ...


# -- chained records, checkpoints and exports (shared by the collector and the offline verifier) --

EXPORT_FORMAT = "mesial-audit-export"
EXPORT_VERSION = 1
CHECKPOINT_KIND = "mesial-audit-checkpoint-v1"
MANIFEST_KIND = "mesial-audit-export-v1"
# The fields of an exported event line besides the event itself.
_CHAIN_FIELDS = ("type", "sequence", "previous_hash", "hash")
_EVENT_FIELDS = frozenset(
    (
        "tenant",
        "actor",
        "action",
        "resource_type",
        "resource_id",
        "outcome",
        "source_ip",
        "request_id",
        "time",
        "details",
    )
)


def format_time(value: datetime) -> str:
    """UTC ISO-8601 with microseconds and a ``Z``: the one spelling hashed into chains."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def checkpoint_message(tenant: str, sequence: int, head_hash: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers: one chain head of one tenant at one time."""
    return canonical(
        {"kind": CHECKPOINT_KIND, "tenant": tenant, "sequence": sequence, "head_hash": head_hash, "time": time}
    )


def manifest_message(manifest: dict[str, Any]) -> bytes:
    """The bytes an export manifest's signature covers: range, ends and count of the export."""
    body = {key: value for key, value in manifest.items() if key not in ("type", "signature", "key_version")}
    return canonical({"kind": MANIFEST_KIND, **body})


def split_signature(signature: str) -> tuple[int, bytes]:
    """``vault:v<N>:<base64>`` → (N, raw signature bytes); ValueError if malformed."""
    parts = signature.split(":")
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v") or not parts[1][1:].isdigit():
        raise ValueError("signature is not of the form vault:v<N>:<base64>")
    raw = base64.b64decode(parts[2], validate=True)
    if base64.b64encode(raw).decode() != parts[2]:
        raise ValueError("signature is not canonical base64")
    return int(parts[1][1:]), raw


def verify_signature(public_keys: dict[int, str], message: bytes, signature: str) -> bool:
    """Offline check of a Vault transit ed25519 signature against the exported public keys."""
    try:
        version, raw = split_signature(signature)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_keys[version], validate=True))
        public.verify(raw, message)
    except (KeyError, ValueError, binascii.Error, InvalidSignature):
        return False
    return True


def key_fingerprint(public_key_b64: str) -> str:
    """A short SHA-256 fingerprint of a raw ed25519 public key (to compare with a pinned one)."""
    return hashlib.sha256(base64.b64decode(public_key_b64, validate=True)).hexdigest()[:32]


def header_digest(header: dict[str, Any]) -> str:
    """SHA-256 of an export header's canonical encoding (the manifest signs it)."""
    return hashlib.sha256(canonical(header)).hexdigest()


def event_line(record: dict[str, Any]) -> dict[str, Any]:
    """An exported event: the event fields plus sequence, previous hash and hash."""
    return {"type": "event", **record}


@dataclass
class VerifyReport:
    """The outcome of verifying an export: ``ok``, or the first bad line and why."""

    ok: bool
    events: int = 0
    checkpoints: int = 0
    first_bad_line: int | None = None
    reason: str = ""
    tenant: str = ""
    key_fingerprints: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.ok:
            return (
                f"OK: {self.events} event(s) of tenant {self.tenant!r}, {self.checkpoints} checkpoint(s) "
                f"and the export manifest verified (signing key {', '.join(self.key_fingerprints)})"
            )
        return f"FAILED at line {self.first_bad_line}: {self.reason}"


class _Bad(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(line, reason)
        self.line = line
        self.reason = reason


def verify_export(lines: Iterable[str | bytes], pinned_public_key: str | None = None) -> VerifyReport:
    """Verify an export offline: header, hash chain, checkpoints and the signed manifest.

    Any change, deletion, insertion, reordering or truncation makes the report name the
    first line that is not what the signed chain says it must be. ``pinned_public_key``
    (base64 raw ed25519) replaces the keys the export carries, for auditors who hold it.
    Lines may be bytes (a file read as such): a line that is not UTF-8 is named like any
    other bad line.
    """
    report = VerifyReport(ok=False)
    try:
        _verify(lines, pinned_public_key, report)
    except _Bad as bad:
        report.first_bad_line, report.reason = bad.line, bad.reason
        return report
    report.ok = True
    return report


def _text(number: int, line: str | bytes) -> str:
    """A line as text without its newline; bytes that are not UTF-8 are a bad line, not a crash."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(number, "not UTF-8 text") from None
    return line.rstrip("\n")


def _parse(number: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(number, f"not JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise _Bad(number, "not JSON") from None
    if not isinstance(value, dict):
        raise _Bad(number, "not a JSON object")
    return value


def _verify(lines: Iterable[str | bytes], pinned: str | None, report: VerifyReport) -> None:
    numbered = ((number, _text(number, line)) for number, line in enumerate(lines, start=1))
    first = next(numbered, None)
    if first is None:
        raise _Bad(1, "empty export")
    header = _parse(*first)
    if header.get("type") != "header" or header.get("format") != EXPORT_FORMAT:
        raise _Bad(1, "not a Mesial audit export header")
    if header.get("version") != EXPORT_VERSION:
        raise _Bad(1, f"export version {header.get('version')!r} is not supported")
    tenant = header.get("tenant")
    if not isinstance(tenant, str):
        raise _Bad(1, "header has no tenant")
    report.tenant = tenant
    try:
        keys = {int(v): str(k) for v, k in dict(header.get("public_keys") or {}).items()}
    except (TypeError, ValueError):
        raise _Bad(1, "header public keys are malformed") from None
    if pinned is not None:
        keys = {version: pinned for version in keys} or {1: pinned}
    if not keys:
        raise _Bad(1, "header carries no public key")
    try:
        report.key_fingerprints = sorted({key_fingerprint(k) for k in keys.values()})
    except (ValueError, binascii.Error):
        raise _Bad(1, "public key is not base64") from None

    hashes: dict[int, str] = {}
    first_sequence: int | None = None
    first_previous = ""
    previous_hash = ""
    last_sequence = 0
    stage = "event"
    last_event_line = 1
    manifest: dict[str, Any] | None = None
    manifest_line = 0
    checkpoint_sequences: list[int] = []
    for number, text in numbered:
        if not text.strip():
            raise _Bad(number, "blank line")
        line = _parse(number, text)
        kind = line.get("type")
        if manifest is not None:
            raise _Bad(number, "content after the export manifest")
        if kind == "event":
            if stage != "event":
                raise _Bad(number, "event after the checkpoints (reordered or inserted)")
            sequence, previous, digest = line.get("sequence"), line.get("previous_hash"), line.get("hash")
            if not isinstance(sequence, int) or not isinstance(previous, str) or not isinstance(digest, str):
                raise _Bad(number, "event without sequence, previous_hash or hash")
            if set(line) - set(_CHAIN_FIELDS) != _EVENT_FIELDS:
                raise _Bad(number, "event fields added or removed")
            if line.get("tenant") != tenant:
                raise _Bad(number, "event of another tenant")
            if first_sequence is None:
                first_sequence, first_previous = sequence, previous
            else:
                if sequence != last_sequence + 1:
                    raise _Bad(number, f"sequence {sequence} follows {last_sequence} (deleted, inserted or reordered)")
                if previous != previous_hash:
                    raise _Bad(number, "previous_hash does not match the line before")
            body = {key: value for key, value in line.items() if key not in _CHAIN_FIELDS}
            if chain_hash(previous, sequence, body) != digest:
                raise _Bad(number, "hash does not match the event (changed)")
            hashes[sequence] = digest
            previous_hash, last_sequence, last_event_line = digest, sequence, number
            report.events += 1
        elif kind == "checkpoint":
            stage = "checkpoint"
            seq, head = line.get("sequence"), line.get("head_hash")
            message = checkpoint_message(tenant, seq, head, line.get("time"))  # type: ignore[arg-type]
            if line.get("tenant") != tenant or not verify_signature(keys, message, str(line.get("signature"))):
                raise _Bad(number, "checkpoint signature does not verify")
            if isinstance(seq, int) and seq > last_sequence and hashes:
                raise _Bad(
                    last_event_line + 1, f"events end before the signed checkpoint at sequence {seq} (truncated)"
                )
            if seq not in hashes:
                raise _Bad(number, f"checkpoint names sequence {seq}, which is not in the export")
            if hashes[seq] != head:
                raise _Bad(number, f"checkpoint head does not match event {seq}")
            report.checkpoints += 1
            checkpoint_sequences.append(seq)
        elif kind == "manifest":
            manifest, manifest_line = line, number
        else:
            raise _Bad(number, f"unknown line type {kind!r}")
    if manifest is None:
        raise _Bad(last_event_line + 1 + report.checkpoints, "export manifest missing (truncated)")
    if manifest.get("tenant") != tenant or not verify_signature(
        keys, manifest_message(manifest), str(manifest.get("signature"))
    ):
        raise _Bad(manifest_line, "export manifest signature does not verify")
    if manifest.get("header_sha256") != header_digest(header):
        raise _Bad(1, "header differs from the one the manifest signed")
    signed_checkpoints = manifest.get("checkpoint_sequences")
    if signed_checkpoints != checkpoint_sequences:
        signed = signed_checkpoints if isinstance(signed_checkpoints, list) else []
        index = next(
            (i for i, (a, b) in enumerate(zip(signed, checkpoint_sequences, strict=False)) if a != b),
            min(len(signed), len(checkpoint_sequences)),
        )
        raise _Bad(last_event_line + 1 + index, "checkpoints differ from the signed list (removed, added or moved)")
    count = manifest.get("count")
    if count == 0 and report.events == 0:
        return
    if first_sequence is None:
        raise _Bad(2, f"manifest lists {count} event(s); none present (truncated)")
    if manifest.get("first_sequence") != first_sequence or manifest.get("first_previous_hash") != first_previous:
        raise _Bad(2, "first event is not the one the manifest signed (deleted or inserted at the start)")
    if manifest.get("last_sequence") != last_sequence or manifest.get("last_hash") != previous_hash:
        raise _Bad(last_event_line + 1, "events end before the signed last event (truncated)")
    if count != report.events:
        raise _Bad(manifest_line, "event count differs from the signed count")


class HttpAuditSink:
    """An :class:`AuditSink` that appends over the collector's internal endpoint.

    For the operator and jobs: ``HttpAuditSink("https://api.mesial-system:8080", key)``
    with a service key (``mesial admin service-key operator``). ``actor``, ``source_ip``
    and ``request_id`` are set by the collector from the credential and the request;
    ``time`` is the event's own. Standard library only (urllib in a thread).
    """

    path = "/internal/v1/audit/events"

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0, cafile: str | None = None) -> None:
        self.url = base_url.rstrip("/") + self.path
        self.token = token
        self.timeout_s = timeout_s
        self.context = tls_context(base_url, cafile)

    def _post(self, body: bytes) -> dict[str, Any]:
        return post_json(
            self.url, self.token, body, service="audit collector", timeout_s=self.timeout_s, context=self.context
        )

    async def append(self, event: AuditEvent) -> None:
        await self.append_record(event)

    async def append_record(self, event: AuditEvent) -> dict[str, Any]:
        """Append and return the collector's answer (tenant, sequence, hash)."""
        body = {
            "tenant": event.tenant,
            "action": event.action,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "outcome": event.outcome,
            "time": format_time(event.time),
            "details": event.details,
        }
        return await asyncio.to_thread(self._post, json.dumps(body).encode())
