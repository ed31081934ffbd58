"""The release's own life, as docs/operator.md tells it ("Upgrading", "Uninstalling"): `helm upgrade`
to a changed chart replaces the operator (strategy Recreate) and Organizations stay served; the
uninstall deletes Organizations first (their finalizers run), then the release, then the CRDs.
The release is installed again at the end for the tests that follow."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import CHART, Kube, Release, eventually, helm, operator_pod
from tests.e2e_cluster.test_organization import ready
from tests.operator.helpers import organization

pytestmark = pytest.mark.usefixtures("operator_authorised")


def env_of(pod: dict[str, Any], name: str) -> str | None:
    env = pod["spec"]["containers"][0].get("env", [])
    return next((e.get("value") for e in env if e["name"] == name), None)


def test_helm_upgrade_to_a_changed_chart_replaces_the_operator(
    kube: Kube, release: Release, cluster: E2ECluster
) -> None:
    kube.apply(organization("e2e-upgrade"))
    eventually(lambda: ready(kube, "e2e-upgrade"), timeout=120, what="Organization e2e-upgrade Ready")
    before = operator_pod(kube, running=True)
    assert before is not None
    kube("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    helm(
        cluster,
        "upgrade",
        release.name,
        str(CHART),
        "-n",
        release.namespace,
        "-f",
        str(release.values_file),
        "--set",
        "operator.driftIntervalSeconds=7",
        "--wait",
        "--timeout=180s",
    )
    kube("-n", release.namespace, "rollout", "status", "deploy/mesial-operator", "--timeout=120s")

    def replaced() -> dict[str, Any] | None:
        pod = operator_pod(kube, running=True)
        return pod if pod and pod["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = eventually(replaced, timeout=120, what="a new operator pod")
    assert env_of(after, "MESIAL_OPERATOR__DRIFT_INTERVAL_S") == "7"
    # Only one operator at a time (Recreate): the old pod is gone.
    assert kube.get("pod", before["metadata"]["name"], "-n", release.namespace) is None
    # The new operator serves old and new Organizations.
    kube.apply(organization("e2e-upgrade2"))
    eventually(lambda: ready(kube, "e2e-upgrade2"), timeout=120, what="Organization e2e-upgrade2 Ready")
    assert ready(kube, "e2e-upgrade")


def test_uninstall_as_documented_then_install_again(kube: Kube, release: Release, cluster: E2ECluster) -> None:
    names = [o["metadata"]["name"] for o in kube.json("get", "organizations")["items"]]
    assert names
    kube("delete", "organizations", "--all", "--wait", "--timeout=300s")

    def namespaces_gone() -> bool:
        return all(kube.get("namespace", f"mesial-org-{name}") is None for name in names)

    eventually(namespaces_gone, timeout=120, what="the tenant namespaces removed")
    helm(cluster, "uninstall", release.name, "-n", release.namespace, "--wait", "--timeout=120s")
    assert kube.get("deployment", "mesial-operator", "-n", release.namespace) is None
    assert kube.get("clusterrole", "mesial-operator") is None
    kube("delete", "crd", "organizations.mesial.dev", "scanjobs.mesial.dev", "retentionpolicies.mesial.dev")
    eventually(lambda: kube.get("crd", "organizations.mesial.dev") is None, timeout=60, what="CRDs gone")

    # And back, for the tests that follow (Helm installs the CRDs again).
    helm(cluster, "install", release.name, str(CHART), "-n", release.namespace, "-f", str(release.values_file))
    eventually(lambda: operator_pod(kube, running=True), timeout=120, what="the operator pod runs again")
