"""The progress document a job writes is untrusted: every field is checked, the verdict included."""

from __future__ import annotations

import json

import pytest

from mesial.common.errors import InputError
from mesial.common.progress import RESULTS, JobProgress, parse_progress


@pytest.mark.parametrize("verdict", RESULTS)
def test_verdict_round_trips(verdict: str) -> None:
    written = JobProgress(stage="done", percent=100, message="m", result=verdict)
    assert parse_progress(json.dumps(written.as_document()).encode()) == written


@pytest.mark.parametrize("value", ["succeeded", "<b>ok</b>", 3, None, ["ok"], "OK"])
def test_unknown_verdicts_are_dropped(value: object) -> None:
    parsed = parse_progress(json.dumps({"percent": 100, "result_status": value}).encode())
    assert parsed.result == ""


def test_hostile_documents_are_refused() -> None:
    with pytest.raises(InputError):
        parse_progress(b"[1, 2]")
    with pytest.raises(InputError):
        parse_progress(json.dumps({"percent": "all"}).encode())
    message = parse_progress(json.dumps({"message": "<script>x</script>\x1b[2J"}).encode()).message
    assert "<" not in message and "\x1b" not in message
