"""Tenant egress: spec.egress.extra is validated (schema and operator), never a metadata service,
the whole Internet or the cluster's own ranges unless the platform allows them, never an
unparsed string; Vault, the store and the audit collector are reachable from aligner pods only."""

from __future__ import annotations

from typing import Any

import pytest

from mesial.common.errors import InputError
from mesial.common.settings import OperatorSettings
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.organization.networkpolicies import desired_networkpolicies, extra_egress
from mesial.operator.sync.scanjob import ALIGNER_LABELS
from mesial.operator.testing import Harness
from tests.operator.conftest import eventually
from tests.operator.helpers import condition, get, organization, status
from tests.operator.test_crds import crd_for

SETTINGS = OperatorSettings(cluster_cidrs=["10.96.0.0/12", "10.244.0.0/16"])


def org_with(*extra: dict[str, Any]) -> OrgView:
    return OrgView.from_body({"metadata": {"name": "acme", "uid": "u"}, "spec": {"egress": {"extra": list(extra)}}})


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("0.0.0.0/0", "refused"),
        ("169.254.169.254/32", "refused"),
        ("169.254.0.0/16", "refused"),
        ("168.0.0.0/6", "refused"),  # contains the metadata range
        ("127.0.0.1/32", "refused"),
        ("10.96.0.1/32", "refused"),  # the cluster's service range
        ("10.0.0.0/8", "refused"),  # contains the cluster's ranges
        ("not-a-cidr", "not an IPv4 CIDR"),
        ("203.0.113.5/24", "not an IPv4 CIDR"),  # host bits set: say what is meant
        ("2001:db8::/32", "not an IPv4 CIDR"),
        ("", "not an IPv4 CIDR"),
    ],
)
def test_refused_destinations(cidr: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        extra_egress(org_with({"cidr": cidr, "ports": [443]}), SETTINGS)


@pytest.mark.parametrize("ports", [[], [0], [70000], ["443"], [True], "443", None])
def test_refused_ports(ports: Any) -> None:
    with pytest.raises(InputError):
        extra_egress(org_with({"cidr": "203.0.113.0/24", "ports": ports}), SETTINGS)


def test_allowed_destinations_and_the_platform_exception() -> None:
    (ok,) = extra_egress(org_with({"cidr": "203.0.113.0/24", "ports": [443]}), SETTINGS)
    assert (ok.cidr, ok.ports) == ("203.0.113.0/24", (443,))
    inside = org_with({"cidr": "10.96.5.0/24", "ports": [5432]})
    with pytest.raises(InputError):
        extra_egress(inside, SETTINGS)
    allowed = SETTINGS.model_copy(update={"egress_extra_allowed": ["10.96.5.0/24"]})
    assert extra_egress(inside, allowed)[0].cidr == "10.96.5.0/24"


def test_vault_store_and_audit_are_for_aligner_pods_only() -> None:
    policies = {p["metadata"]["name"]: p for p in desired_networkpolicies(org_with(), OperatorSettings())}
    everyone = policies["mesial-allow-egress"]["spec"]
    assert everyone["podSelector"] == {}
    assert [sorted(p["port"] for p in rule["ports"]) for rule in everyone["egress"]] == [[53, 53]]
    aligner = policies["mesial-allow-egress-aligner"]["spec"]
    assert aligner["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "aligner"}}
    assert aligner["podSelector"]["matchLabels"].items() <= ALIGNER_LABELS.items()
    assert [sorted(p["port"] for p in rule["ports"]) for rule in aligner["egress"]] == [[8200], [8333], [8080]]


def test_the_crd_checks_the_cidr_too() -> None:
    spec = crd_for("Organization")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cidr = spec["properties"]["egress"]["properties"]["extra"]["items"]["properties"]["cidr"]
    rules = " ".join(v["rule"] for v in cidr.get("x-kubernetes-validations") or [])
    assert "isCIDR(self)" in rules and "169.254.0.0/16" in rules and "masked()" in rules


async def test_an_organization_asking_for_the_metadata_service_gets_no_such_rule(
    harness: Harness, org_name: Any
) -> None:
    name = org_name("egress")
    k8s = harness.client
    await k8s.create(organization(name, egress={"extra": [{"cidr": "169.254.169.254/32", "ports": [80]}]}))

    async def refused() -> dict[str, Any] | None:
        st = await status(k8s, name)
        return st if condition(st, "NetworkReady").get("status") == "False" else None

    st = await eventually(refused)
    assert "169.254.169.254/32" in condition(st, "NetworkReady")["message"]
    deny = await get(k8s, "networking.k8s.io/v1", "NetworkPolicy", "mesial-default-deny", f"mesial-org-{name}")
    assert deny["spec"]["podSelector"] == {}  # the namespace stays closed
    allow = await k8s.get("networking.k8s.io/v1", "NetworkPolicy", "mesial-allow-egress", f"mesial-org-{name}")
    assert allow is None or "169.254" not in str(allow)


def test_ports_are_1_to_8_tcp_ports_from_1_to_65535() -> None:
    """operator.md: the operator checks the ports of each extra destination (1 to 8, 1-65535)."""
    widest = list(range(65528, 65536))  # 8 ports, up to 65535
    (ok,) = extra_egress(org_with({"cidr": "203.0.113.0/24", "ports": widest}), SETTINGS)
    assert ok.ports == tuple(widest)
    assert extra_egress(org_with({"cidr": "203.0.113.0/24", "ports": [1]}), SETTINGS)[0].ports == (1,)
    with pytest.raises(InputError, match="1 to 8 TCP ports"):
        extra_egress(org_with({"cidr": "203.0.113.0/24", "ports": [*widest, 443]}), SETTINGS)
