"""Schemathesis against the OpenAPI document of a real server: no server errors.

The document is the committed one (``test_docs`` proves it equals the served one); the
server runs ``mesial api serve`` in its own process (on PostgreSQL when the run has it), and every
generated request is authenticated as an org-admin of a fresh organization. Bounded:
``MAX_EXAMPLES`` cases per operation. (Schemathesis' pytest plugin does not run on
pytest 9 yet, so the strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from mesial.common.settings import Settings
from tests.api.conftest import BACKEND
from tests.api.test_cli import cli_env, run, serve

MAX_EXAMPLES = 15
DOCUMENT = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS: dict[str, Any] = {}
for _result in cast(Any, SCHEMA).get_all_operations():
    _operation: Any = _result.ok()  # an invalid operation raises here, at collection
    OPERATIONS[_operation.label] = _operation


@pytest.fixture(scope="module")
def live(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("schemathesis")
    env = {**cli_env(service_settings, home), "HOME": str(home)}
    env.update({"MESIAL_API__RATE_PER_KEY_PER_MIN": "100000", "MESIAL_API__RATE_PER_IP_PER_MIN": "100000"})
    if BACKEND == "postgres":  # the stricter database (NUL bytes, lengths) when this run has it
        env["MESIAL_DATABASE_URL"] = request.getfixturevalue("postgres").url
    assert run(env, "admin", "create-org", "fuzz-lab").returncode == 0
    key = run(env, "admin", "issue-key", "--org", "fuzz-lab", "--role", "org-admin").stdout.strip()
    server, base = serve(env, home)
    try:
        yield base, key
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors(label: str, live: tuple[str, str]) -> None:
    base, key = live
    headers = {"Authorization": f"Bearer {key}"}
    statuses: list[int] = []

    # CI replays the same examples every run (a red build must mean a change broke
    # something); developers' runs draw new ones and so keep finding new inputs.
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=os.environ.get("CI") == "true",
    )
    @given(case=OPERATIONS[label].as_strategy())
    def check(case: Any) -> None:
        response = case.call_and_validate(base_url=base, headers=headers, checks=[not_a_server_error])
        statuses.append(response.status_code)

    check()
    assert statuses and max(statuses) < 500
