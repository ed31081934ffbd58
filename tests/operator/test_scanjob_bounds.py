"""A ScanJob's numbers as operator.md states them: ``contactThresholdMm`` 0.01..2 (default 0.1),
``timeouts.activeDeadlineSeconds`` 60..86400, ``retries`` 0..5. The CRD declares them for the
API server; the operator re-checks them (the emulator and a misconfigured cluster check nothing),
and the API and `mesial job run` take the same threshold. Each side at both ends, one past refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mesial.aligner.job import job
from mesial.api.schemas import JobOptions, JobReport
from mesial.common.contract import JobSpec
from mesial.common.errors import InputError
from mesial.operator import reporting
from mesial.operator.sync import jobreport
from mesial.operator.sync.scanjob import JOB_ID_LABEL, RunLimits

ROOT = Path(__file__).resolve().parents[2]
DOC = " ".join((ROOT / "docs" / "operator.md").read_text().split())


def _crd_spec() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "scanjob.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def _bounds(field: dict[str, Any]) -> tuple[Any, Any, Any]:
    return field["minimum"], field["maximum"], field["default"]


def test_the_contact_threshold_is_0_01_to_2_mm_default_0_1_on_every_side() -> None:
    assert "(`contactThresholdMm` 0.01..2, default 0.1;" in DOC
    assert _bounds(_crd_spec()["options"]["properties"]["contactThresholdMm"]) == (0.01, 2.0, 0.1)
    spec = {"scans": {"upper": "u", "lower": "l", "bites": ["b"]}}

    def operator(value: float | None) -> float:
        options = {} if value is None else {"options": {"contactThresholdMm": value}}
        return JobSpec.from_scanjob("lab", "j", {**spec, **options}).contact_threshold_mm

    def api(value: float | None) -> float:
        return (JobOptions() if value is None else JobOptions(contact_threshold_mm=value)).contact_threshold_mm

    def job_run(value: float | None) -> float:
        argv = ["--org", "lab", "--job-id", "j", "--upper", "u", "--lower", "l", "--bite", "b"]
        params = (
            job.commands["run"]
            .make_context("run", argv if value is None else [*argv, "--contact-threshold", str(value)])
            .params
        )
        return float(JobSpec("lab", "j", "u", "l", ("b",), params["contact_threshold"]).contact_threshold_mm)

    for side in (operator, api, job_run):
        assert (side(None), side(0.01), side(2.0)) == (0.1, 0.01, 2.0), side.__name__
        for past in (0.0099, 2.001):
            with pytest.raises((InputError, ValidationError)):
                side(past)


@pytest.mark.parametrize(
    ("spec", "limits"),
    [
        ({}, (1800, 2)),  # the CRD's defaults, taken by the operator too
        ({"timeouts": {"activeDeadlineSeconds": 60}, "retries": 0}, (60, 0)),
        ({"timeouts": {"activeDeadlineSeconds": 86400}, "retries": 5}, (86400, 5)),
        ({"timeouts": {"activeDeadlineSeconds": 59}}, None),
        ({"timeouts": {"activeDeadlineSeconds": 86401}}, None),
        ({"retries": -1}, None),
        ({"retries": 6}, None),
    ],
)
def test_the_deadline_is_60_to_86400_s_and_retries_0_to_5(spec: dict[str, Any], limits: tuple[int, int] | None) -> None:
    assert "`timeouts.activeDeadlineSeconds` (60..86400, capped by the tier), `retries` (0..5)" in DOC
    crd = _crd_spec()
    assert _bounds(crd["timeouts"]["properties"]["activeDeadlineSeconds"]) == (60, 86400, 1800)
    assert _bounds(crd["retries"]) == (0, 5, 2)
    if limits is None:
        with pytest.raises(InputError):
            RunLimits.from_spec(spec)
    else:
        assert RunLimits.from_spec(spec) == RunLimits(*limits)


async def test_a_failed_jobs_report_is_bounded_to_the_endpoints_256_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """operator.md: `failed` is reported with `<reason>: <message>`, bounded to the endpoint's 256
    characters. A longer one would be refused for good (422: recorded as reported), and the API
    would never learn that the job failed."""
    sent: list[dict[str, Any]] = []

    def post_json(url: str, token: str, body: bytes, **_: Any) -> dict[str, Any]:
        sent.append(json.loads(body))
        return {}

    monkeypatch.setattr(reporting, "post_json", post_json)
    text = "Job was active longer than specified deadline " * 20
    scanjob: dict[str, Any] = {
        "metadata": {"name": "sj", "namespace": "mesial-org-lab", "uid": "u-1", "labels": {JOB_ID_LABEL: "job_1"}},
        "status": {"tenant": "lab", "phase": "Failed", "reportedPhase": "Running", "startTime": "2026-01-01T00:00:00Z",
                   "reason": "DeadlineExceeded", "message": text},
    }  # fmt: skip
    await jobreport.report(reporting.JobReporter("http://api.invalid", "key"), scanjob)
    (report,) = sent
    full = f"DeadlineExceeded: {text}"
    assert report["state"] == "failed" and 250 <= len(report["message"]) <= 256  # cut at 256, a last space dropped
    assert full.startswith(report["message"])
    JobReport(state="failed", tenant="lab", message=report["message"])  # the endpoint takes it
    JobReport(state="failed", tenant="lab", message=full[:256])
    with pytest.raises(ValidationError):
        JobReport(state="failed", tenant="lab", message=full[:257])
