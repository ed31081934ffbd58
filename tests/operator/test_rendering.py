"""Every object the operator writes is valid for Kubernetes (kubernetes-validate, strict), and
the error mapping covers the whole domain error tree."""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes_validate
import pytest

from mesial.common import errors
from mesial.common.settings import OperatorSettings, Settings
from mesial.operator.errors import RETRY, to_kopf
from mesial.operator.k8s import merge_patch
from mesial.operator.sync.organization.deletion import DeletionBlocked
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.organization.namespaces import desired_namespace
from mesial.operator.sync.organization.networkpolicies import desired_networkpolicies
from mesial.operator.sync.organization.quotas import desired_quotas
from mesial.operator.sync.organization.rbac import desired_rbac
from mesial.operator.sync.scanjob import build_job, job_name_for, job_spec

BODY = {
    "metadata": {"name": "acme", "uid": "u-1", "generation": 3},
    "spec": {"tier": "large", "egress": {"extra": [{"cidr": "203.0.113.0/24", "ports": [443, 8443]}]}},
}


def desired_objects(settings: OperatorSettings) -> list[dict[str, Any]]:
    org = OrgView.from_body(BODY)
    return [
        desired_namespace(org, settings),
        *desired_rbac(org, settings),
        *desired_quotas(org, settings),
        *desired_networkpolicies(org, settings),
    ]


@pytest.mark.parametrize("cidr_settings", [False, True])
def test_owned_objects_are_valid_kubernetes(cidr_settings: bool) -> None:
    settings = OperatorSettings()
    if cidr_settings:
        settings = settings.model_copy(
            update={"egress_vault": OperatorSettings.Egress(cidrs=["10.9.0.0/16"], ports=[8200])}
        )
    for obj in desired_objects(settings):
        assert kubernetes_validate.validate(obj, "1.33", strict=True), obj["kind"]


def test_network_policies_deny_all_then_allow_only_the_listed_egress() -> None:
    deny, allow, aligner = desired_networkpolicies(OrgView.from_body(BODY), OperatorSettings())
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for policy in (allow, aligner):
        assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Egress"]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in allow["spec"]["egress"]]
    assert ports == [[53, 53], [443, 8443]]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in aligner["spec"]["egress"]]
    assert ports == [[8200], [8333], [8080]]


def test_job_is_valid_kubernetes() -> None:
    settings = Settings()
    body = {"metadata": {"name": "case-1", "namespace": "mesial-org-acme", "uid": "u-2"},
            "spec": {"scans": {"upper": "a", "lower": "b", "bites": ["c"]}}}  # fmt: skip
    job = build_job(body, *job_spec(body, "acme"), settings, settings.operator.tiers["small"])
    assert kubernetes_validate.validate(job, "1.33", strict=True)


def test_job_names_fit_63_characters() -> None:
    assert job_name_for("a" * 200) != job_name_for("a" * 199)
    assert len(job_name_for("a" * 253)) <= 63


def test_merge_patch_removes_what_was_added() -> None:
    actual = {"hard": {"pods": "999", "secrets": "5"}}
    desired = {"hard": {"pods": "10"}}
    assert merge_patch(actual, desired) == {"hard": {"pods": "10", "secrets": None}}
    assert merge_patch(desired, desired) is None


def test_every_domain_error_has_a_retry_decision() -> None:
    def subclasses(cls: type[Any]) -> set[type[Any]]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    known = {c for c in subclasses(errors.MesialError) if c.__module__ == errors.__name__}
    assert known <= set(RETRY), sorted(c.__name__ for c in known - set(RETRY))
    assert isinstance(to_kopf(errors.VaultUnavailable("down"), 2.0), kopf.TemporaryError)
    assert isinstance(to_kopf(errors.InputError("bad"), 2.0), kopf.PermanentError)
    assert isinstance(to_kopf(DeletionBlocked("busy"), 2.0), kopf.TemporaryError)


def test_kopf_rechecks_an_exiting_timer_within_seconds() -> None:
    """A ScanJob deleted while its mirror timer runs keeps its finalizer until kopf re-checks
    (kopf's default: 60 s, which made the forced-deletion test fail under load)."""
    from mesial.operator.main import configure

    kopf_settings = kopf.OperatorSettings()
    settings = Settings()
    configure(kopf_settings, settings)
    assert kopf_settings.background.cancellation_polling == settings.operator.timer_exit_poll_s <= 5
    assert kopf_settings.persistence.consistency_timeout == settings.operator.consistency_timeout_s


def test_job_store_identity_is_the_restricted_one_when_configured() -> None:
    from pydantic import SecretStr

    from mesial.operator.sync.organization.store import desired_store_secret

    op = OperatorSettings(job_store_access_key=SecretStr("job-ak"), job_store_secret_key=SecretStr("job-sk"))
    settings = Settings().model_copy(update={"operator": op})
    secret = desired_store_secret(OrgView.from_body(BODY), settings)
    assert kubernetes_validate.validate(secret, "1.33", strict=True)
    assert secret["metadata"]["namespace"] == "mesial-org-acme"
    assert secret["data"] == {"access-key": "am9iLWFr", "secret-key": "am9iLXNr"}  # job-ak, job-sk
