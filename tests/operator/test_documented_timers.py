"""The operator's timers and waits as docs/operator.md states them, in the operator as it is
assembled (``build_registry``, ``configure``) with the default settings, not only as defaults of
the settings object: a number the wiring drops or renames fails here too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from mesial.common.settings import OperatorSettings, Settings
from mesial.operator.main import build_registry, configure
from mesial.operator.sync.organization import access
from mesial.operator.sync.organization.model import OrgView

DOC = " ".join((Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text().split())


def _kopf_configured() -> kopf.OperatorSettings:
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings, Settings.model_construct())
    return kopf_settings


def _timer(handler_id: str) -> Any:
    registry = build_registry(Settings.model_construct())
    return next(h for h in registry._spawning.get_all_handlers() if h.id == handler_id)


# (phrase as operator.md says it, what the assembled operator has, the number)
STATED = [
    ("a timer (`operator.drift_interval_s`, default 60 s) re-applies", lambda: _timer("drift").interval, 60),
    ("`background.cancellation_polling = operator.timer_exit_poll_s` (1 s; kopf's default 60 s)",
     lambda: _kopf_configured().background.cancellation_polling, 1),
    ("(1 s; kopf's default 60 s)", lambda: kopf.OperatorSettings().background.cancellation_polling, 60),
    ("`persistence.consistency_timeout = operator.consistency_timeout_s` (2 s; kopf's default 5 s)",
     lambda: _kopf_configured().persistence.consistency_timeout, 2),
    ("(2 s; kopf's default 5 s)", lambda: kopf.OperatorSettings().persistence.consistency_timeout, 5),
    ("`watching.server_timeout = 300`", lambda: _kopf_configured().watching.server_timeout, 300),
    ("for `operator.access_wait_s` (10 s) at most", lambda: OperatorSettings().access_wait_s, 10),
]  # fmt: skip


@pytest.mark.parametrize(("phrase", "actual", "number"), STATED, ids=[s[0][:50] for s in STATED])
def test_the_timers_operator_md_states_are_the_operators(phrase: str, actual: Any, number: float) -> None:
    assert phrase in DOC, f"docs/operator.md no longer says {phrase!r}"
    assert actual() == number


async def test_a_new_binding_is_waited_for_10_seconds_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """operator.md: after binding itself in a new tenant namespace the operator polls a
    SelfSubjectAccessReview until the binding is in effect, for 10 s at most. On a clock of the
    test's (the reviews and the waits between them advance it): the last review at 10 s, none after."""
    clock = [0.0]
    reviews: list[float] = []

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        await asyncio.sleep(0)

    class NeverBound:
        async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
            if obj["kind"] == "SelfSubjectAccessReview":
                reviews.append(clock[0])
                return {**obj, "status": {"allowed": False}}
            return obj

    monkeypatch.setattr(access, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(access, "asyncio", SimpleNamespace(sleep=sleep))
    org = OrgView.from_body({"metadata": {"name": "acme", "uid": "u-1"}, "spec": {"tier": "small"}})
    settings = OperatorSettings(tenant_cluster_role="rel-mesial-operator-tenant", service_account="ms/rel-op")
    await access.sync_access(NeverBound(), org, settings)  # type: ignore[arg-type]
    assert reviews[0] == 0.0
    assert reviews[-1] == pytest.approx(10.0, abs=0.11), reviews[-3:]
