"""The job contract: one key layout (classified for retention), one job spec that every side
reads and writes the same way, and the progress document, which is untrusted: every field is
checked, the verdict included."""

from __future__ import annotations

import json

import pytest

from mesial.common.contract import (
    RESULTS,
    JobProgress,
    JobSpec,
    artifact_key,
    artifact_name,
    classify_key,
    parse_progress,
    progress_key,
    scan_key,
)
from mesial.common.errors import InputError


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


def test_every_key_the_platform_writes_is_classified_for_retention() -> None:
    assert classify_key(scan_key("scn_1")) == ("scans", "scan", "scn_1")
    assert classify_key(artifact_key("job_1", "report.json")) == ("results", "job", "job_1")
    assert classify_key(progress_key("job_1")) == ("results", "job", "job_1")
    # keys outside the layout still belong to the tenant: swept as "other", with a receipt-safe id
    assert classify_key("results/j1/report.json") == ("other", "object", "results")
    assert classify_key("weird key/x") == ("other", "object", "weird_key")
    assert artifact_name("job_1", artifact_key("job_1", "a.ply")) == "a.ply"
    assert artifact_name("job_2", artifact_key("job_1", "a.ply")) is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_artifact_names_are_one_segment(name: str) -> None:
    with pytest.raises(InputError):
        artifact_key("job_1", name)


def test_one_job_spec_round_trips_through_every_form() -> None:
    """API options, ScanJob spec and `mesial job run` arguments all give back the same spec."""
    click = pytest.importorskip("mesial.aligner.job")
    spec = JobSpec("lab", "job_1", "scn_u", "scn_l", ("scn_b1", "scn_b2"), 0.25, False)
    assert JobSpec.from_options("lab", "job_1", "scn_u", "scn_l", ["scn_b1", "scn_b2"], spec.options()) == spec
    assert JobSpec.from_scanjob("lab", "job_1", spec.scanjob_spec()) == spec
    params = click.job.commands["run"].make_context("run", spec.argv()).params
    parsed = JobSpec(params["org"], params["job_id"], params["upper"], params["lower"], params["bites"],
                     params["contact_threshold"], not params["no_optimise"])  # fmt: skip
    assert parsed == spec


@pytest.mark.parametrize(
    "fields",
    [
        {"org": "Bad/Org"},
        {"job_id": "../x"},
        {"upper": "a/b"},
        {"bites": ()},
        {"bites": ("c", "d", "e")},
        {"lower": "u"},  # the same scan twice
        {"contact_threshold_mm": 5.0},
        {"contact_threshold_mm": True},
        {"optimise": "yes"},
    ],
)
def test_job_spec_refuses_what_no_side_may_run(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"org": "lab", "job_id": "j", "upper": "u", "lower": "l", "bites": ("c",)}
    with pytest.raises(InputError):
        JobSpec(**{**base, **fields})  # type: ignore[arg-type]
