"""The operator's first requests in a new tenant namespace, right after it bound itself there.

kube-apiserver's RBAC authorizer reads RoleBindings from an informer cache, so a request made at once
after the binding was created can be refused (403) for a moment. The operator waits until the
authorizer applies its binding (a SelfSubjectAccessReview polled, never a 403), so none of its
requests is refused: several Organizations created at once, each namespace bound and filled at the
same time, and the strict check of every test (``operator_authorised``: any 403 of the operator's
ServiceAccount fails) holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import Kube, Release, eventually, refusals
from tests.e2e_cluster.test_organization import ready
from tests.operator.helpers import organization

pytestmark = pytest.mark.usefixtures("operator_authorised")

NAMES = [f"e2e-bind-{i}" for i in range(5)]


def test_organizations_created_together_are_provisioned_without_a_single_refusal(
    kube: Kube, release: Release, cluster: E2ECluster
) -> None:
    kube.apply("".join(f"---\n{json.dumps(organization(name))}\n" for name in NAMES))

    def all_ready() -> list[str] | None:
        waiting = [name for name in NAMES if not ready(kube, name)]
        return None if waiting else NAMES

    eventually(all_ready, timeout=240, interval=1, what="the Organizations Ready")
    user = f"system:serviceaccount:{release.namespace}:{release.operator_sa}"
    events = [json.loads(line) for line in Path(cluster.audit_log).read_text().splitlines()]
    mine = [e for e in events if e.get("user", {}).get("username") == user]
    bound = {
        e["objectRef"]["namespace"]
        for e in mine
        if e["verb"] == "create"
        and e.get("objectRef", {}).get("resource") == "rolebindings"
        and e.get("responseStatus", {}).get("code") == 201
    }
    assert {f"mesial-org-{name}" for name in NAMES} <= bound  # each namespace bound by the operator itself
    reviews = [e for e in mine if e.get("objectRef", {}).get("resource") == "selfsubjectaccessreviews"]
    assert len(reviews) >= len(NAMES), "the operator did not ask whether its new bindings were in effect"
    assert refusals(cluster, user) == []
    for name in NAMES:
        kube("delete", "organization", name, "--wait=false")

    def all_gone() -> bool:
        return all(kube.get("organization", name) is None for name in NAMES)

    eventually(all_gone, timeout=240, interval=1, what="the Organizations gone")
