"""A ScanJob's numbers as operator.md states them: ``contactThresholdMm`` 0.01..2 (default 0.1),
``timeouts.activeDeadlineSeconds`` 60..86400, ``retries`` 0..5. The CRD declares them for the
API server; the operator re-checks them (the emulator and a misconfigured cluster check nothing),
and the API and `mesial job run` take the same threshold. Each side at both ends, one past refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mesial.aligner.job import job
from mesial.api.schemas import JobOptions
from mesial.common.contract import JobSpec
from mesial.common.errors import InputError
from mesial.operator.sync.scanjob import RunLimits

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
