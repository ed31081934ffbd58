"""Offline verification as a property: any edit of an export is detected (pure, no services).

The export is built here with the same primitives the collector uses and signed with a
local ed25519 key in Vault's signature format (``vault:v1:<base64>``).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from mesial.common import audit
from mesial.common.audit import GENESIS_HASH, AuditEvent, chain_hash, format_time, verify_export

KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign(message: bytes) -> str:
    return "vault:v1:" + base64.b64encode(KEY.sign(message)).decode()


def build_export(count: int = 12, tenant: str = "lab", first: int = 1) -> list[str]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    previous = GENESIS_HASH if first == 1 else "ab" * 32
    records: list[dict[str, Any]] = []
    for offset in range(count):
        sequence = first + offset
        event = AuditEvent(
            tenant, "key:key_1", "scan.uploaded", "scan", f"scn_{sequence:024x}", "success", "10.0.0.1",
            f"req-{sequence}", start + timedelta(seconds=sequence), {"status": 201},
        ).as_dict()  # fmt: skip
        digest = chain_hash(previous, sequence, event)
        records.append({**event, "sequence": sequence, "previous_hash": previous, "hash": digest})
        previous = digest
    header = {"type": "header", "format": audit.EXPORT_FORMAT, "version": 1, "tenant": tenant,
              "from": None, "to": None, "exported_at": format_time(start), "public_keys": {"1": PUBLIC}}  # fmt: skip
    lines = [json.dumps(header)] + [json.dumps(audit.event_line(r)) for r in records]
    middle = records[count // 2]
    time = format_time(start)
    checkpoint = {"type": "checkpoint", "tenant": tenant, "sequence": middle["sequence"], "head_hash": middle["hash"],
                  "time": time, "signature": sign(audit.checkpoint_message(tenant, middle["sequence"], middle["hash"], time))}  # fmt: skip
    manifest: dict[str, Any] = {"type": "manifest", "tenant": tenant, "from": None, "to": None, "count": count,
                                "first_sequence": first, "first_previous_hash": records[0]["previous_hash"],
                                "last_sequence": records[-1]["sequence"], "last_hash": records[-1]["hash"],
                                "checkpoint_sequences": [middle["sequence"]], "time": time,
                                "header_sha256": audit.header_digest(header)}  # fmt: skip
    manifest["signature"] = sign(audit.manifest_message(manifest))
    return [line + "\n" for line in [*lines, json.dumps(checkpoint), json.dumps(manifest)]]


def test_an_intact_export_verifies_also_mid_chain() -> None:
    assert verify_export(build_export()).ok
    assert verify_export(build_export(first=41)).ok  # a time-range export starts mid-chain
    assert verify_export(build_export(), pinned_public_key=PUBLIC).ok
    other = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    pinned = verify_export(build_export(), pinned_public_key=other)
    assert not pinned.ok and "signature" in pinned.reason


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_edit_is_detected(data: st.DataObject) -> None:
    lines = build_export()
    kind = data.draw(st.sampled_from(["delete", "swap", "duplicate", "byte", "truncate"]))
    edited = list(lines)
    if kind == "delete":
        del edited[data.draw(st.integers(0, len(lines) - 1))]
    elif kind == "swap":
        i, j = data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=2, max_size=2, unique=True))
        edited[i], edited[j] = edited[j], edited[i]
    elif kind == "duplicate":
        i = data.draw(st.integers(0, len(lines) - 1))
        edited.insert(data.draw(st.integers(0, len(lines))), lines[i])
    elif kind == "byte":
        i = data.draw(st.integers(0, len(lines) - 1))
        text = lines[i].rstrip("\n")
        position = data.draw(st.integers(0, len(text) - 1))
        replacement = data.draw(st.characters(codec="ascii", exclude_characters="\n\r"))
        edited[i] = text[:position] + replacement + text[position + 1 :] + "\n"
    else:
        edited = edited[: data.draw(st.integers(0, len(lines) - 1))]
    if edited == lines:
        return
    # An edit that leaves the JSON meaning unchanged (e.g. whitespace between tokens) is not a change.
    try:
        if [json.loads(x) for x in edited] == [json.loads(x) for x in lines]:
            return
    except ValueError:
        pass
    report = verify_export(edited)
    assert not report.ok, (kind, report)
    assert report.first_bad_line is not None and 1 <= report.first_bad_line <= len(lines) + 1
