"""The settings the docs name exist, and the defaults they state are the code's.

An outside reader configures Mesial from README.md's table and the numbers in docs/*.md: a
variable that names no field is silently ignored by pydantic-settings (``extra="ignore"``),
and a default that moved in the code leaves the page promising the old one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mesial.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Variables of the test harnesses and benchmarks, not settings.
NOT_SETTINGS = {"MESIAL_E2E_CLUSTER", "MESIAL_E2E_KEEP", "MESIAL_E2E_LOG_LEVEL", "MESIAL_REAL_SCANS"}


def _text(name: str) -> str:
    return " ".join((ROOT / name).read_text().split())  # whitespace folded: phrases may wrap


def _field(variable: str) -> Any:
    """The default of the field ``variable`` (``MESIAL_VAULT__TIMEOUT_S``) is read into; KeyError if none.
    Defaults only: ``model_construct`` reads neither the environment nor ``.env``."""
    model: BaseModel = Settings.model_construct()
    *sections, name = variable.removeprefix("MESIAL_").lower().split("__")
    for section in sections:
        if section not in type(model).model_fields:
            raise KeyError(variable)
        model = getattr(model, section)
    if name not in type(model).model_fields:
        raise KeyError(variable)
    value = getattr(model, name)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def _readme_rows() -> list[tuple[list[str], list[str]]]:
    """README's configuration table: (variables, stated defaults) per row; ``__X`` is the first one's section."""
    rows = []
    table = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`MESIAL_"):
            continue
        names = [n.strip("` ") for n in cells[0].split(",")]
        section = names[0].rsplit("__", 1)[0] if "__" in names[0] else ""
        names = [section + n if n.startswith("__") else n for n in names]
        rows.append((names, [d.strip("` ") for d in cells[1].split(",")]))
    return rows


def _value(stated: str) -> str | float:
    """A default as the table writes it: `5`, `0.2`, 1 MiB, 5 M, or text."""
    number = re.fullmatch(r"([\d.]+)\s*(MiB|M)?", stated)
    if number is None:
        return stated
    scale = {"MiB": 1 << 20, "M": 1_000_000, None: 1}[number.group(2)]
    return float(number.group(1)) * scale


def test_every_setting_the_docs_name_is_a_field() -> None:
    named = {n for names, _ in _readme_rows() for n in names}
    for doc in ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]:
        named |= set(re.findall(r"MESIAL_[A-Z0-9_]*[A-Z0-9]", (ROOT / doc).read_text()))
    named -= NOT_SETTINGS | {"MESIAL_ALIGNER"}  # the bare section, in a sentence of aligner.md
    unknown = []
    for variable in sorted(named):
        try:
            _field(variable)
        except KeyError:
            unknown.append(variable)
    assert not unknown, f"the docs name settings that do not exist: {unknown}"
    assert len(named) >= 30, sorted(named)


def test_readmes_configuration_table_states_the_defaults() -> None:
    checked = 0
    for names, stated in _readme_rows():
        for name, default in zip(names, stated, strict=False):  # later names of a row have no default given
            actual = _field(name)
            expected = _value(default)
            if isinstance(expected, float):
                assert float(actual) == expected, (name, default, actual)
            else:
                assert str(actual) == expected, (name, default, actual)
            checked += 1
    assert checked == 15


# (document, phrase as the page says it, variable, default)
STATED = [
    ("docs/api.md", "valid 15 minutes (`MESIAL_API__LINK_TTL_S`)", "MESIAL_API__LINK_TTL_S", 15 * 60),
    ("docs/api.md", "every `api.retention_interval_s` (default 3600 s", "MESIAL_API__RETENTION_INTERVAL_S", 3600),
    ("docs/api.md", "`OIDC_JWKS_MIN_REFETCH_S` (30 s)", "MESIAL_API__OIDC_JWKS_MIN_REFETCH_S", 30),
    ("docs/audit.md", "`MESIAL_API__CHECKPOINT_INTERVAL_S` seconds (default 300)", "MESIAL_API__CHECKPOINT_INTERVAL_S", 300),
    ("docs/audit.md", "`MESIAL_VAULT__AUDIT_SIGNING_KEY` (ed25519", "MESIAL_VAULT__AUDIT_SIGNING_KEY", "mesial-audit"),
    ("docs/storage.md", "`MESIAL_VAULT__AUDIT_SIGNING_KEY`, default `mesial-audit`", "MESIAL_VAULT__AUDIT_SIGNING_KEY", "mesial-audit"),
    ("docs/storage.md", "`MESIAL_VAULT__KEY_ROTATION_PERIOD` (default `720h`)", "MESIAL_VAULT__KEY_ROTATION_PERIOD", "720h"),
    ("docs/storage.md", "(`MESIAL_VAULT__TIMEOUT_S`, 5 s)", "MESIAL_VAULT__TIMEOUT_S", 5),
    ("docs/storage.md", "`MESIAL_VAULT__MAX_ATTEMPTS` (4) attempts", "MESIAL_VAULT__MAX_ATTEMPTS", 4),
    ("docs/storage.md", "`MESIAL_VAULT__BACKOFF_S` (0.2 s)", "MESIAL_VAULT__BACKOFF_S", 0.2),
    ("docs/storage.md", "(part size `MESIAL_STORE__PART_SIZE`, 8 MiB)", "MESIAL_STORE__PART_SIZE", 8 << 20),
    ("docs/operator.md", "Deletion (finalizer `mesial.dev/cleanup`)", "MESIAL_OPERATOR__FINALIZER", "mesial.dev/cleanup"),
    ("docs/operator.md", "(`standalone` default true: run one replica", "MESIAL_OPERATOR__STANDALONE", True),
    ("docs/operator.md", "liveness endpoint (`http://0.0.0.0:8080/healthz`)", "MESIAL_OPERATOR__LIVENESS_ENDPOINT",
     "http://0.0.0.0:8080/healthz"),
    ("docs/operator.md", "With `operator.job_store_identity: per-tenant` (the default)", "MESIAL_OPERATOR__JOB_STORE_IDENTITY",
     "per-tenant"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "phrase", "variable", "default"), STATED, ids=[s[1][:40] for s in STATED])
def test_the_defaults_the_docs_state_are_the_codes(doc: str, phrase: str, variable: str, default: Any) -> None:
    assert phrase in _text(doc), f"{doc} no longer says {phrase!r}"
    assert _field(variable) == default, (variable, _field(variable))
