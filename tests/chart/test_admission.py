"""The operator's admission policy (policies/admission/operator-guard.yaml, rendered by the chart):
what a stolen operator token could try, refused; what the operator does, admitted.

The policy's CEL runs in cel-python here (``tests/operator/admission.py``); the requests the
operator really makes are replayed through it in ``tests/operator/test_least_privilege.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.test_chart import CHART, helm, render
from tests.operator.admission import Policy

OPERATOR = "system:serviceaccount:mesial-system:rel-mesial-operator"
IMAGE = "ghcr.io/mesial/mesial:0.1.0"
TENANT = "mesial-org-acme"
OWNED = {"metadata": {"name": TENANT, "labels": {"app.kubernetes.io/managed-by": "mesial-operator"}}}
FOREIGN = {"metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}}


@pytest.fixture(scope="module")
def policy(k8s_tools: dict[str, Path]) -> Policy:
    (doc,) = [d for d in render(k8s_tools) if d["kind"] == "ValidatingAdmissionPolicy"]
    return Policy(doc)


def job(sa: str = "mesial-aligner", image: str = IMAGE, **extra: Any) -> dict[str, Any]:
    pod = {"serviceAccountName": sa, "containers": [{"name": "aligner", "image": image}], **extra}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": pod}}}


def ask(
    policy: Policy,
    operation: str,
    resource: str,
    *,
    group: str = "",
    namespace: str = TENANT,
    obj: Any = None,
    old: Any = None,
    user: str = OPERATOR,
) -> list[str]:
    ns_object = {TENANT: OWNED, "kube-system": FOREIGN}.get(namespace) if resource != "namespaces" else None
    name = ((obj or old or {}).get("metadata") or {}).get("name", "x")
    return policy.denials(
        username=user,
        operation=operation,
        group=group,
        resource=resource,
        namespace="" if resource == "namespaces" else namespace,
        name=name,
        obj=obj,
        old=old,
        namespace_object=ns_object,
    )


def test_aligner_jobs_in_tenant_namespaces_are_admitted(policy: Policy) -> None:
    assert ask(policy, "CREATE", "jobs", group="batch", obj=job()) == []
    assert ask(policy, "DELETE", "jobs", group="batch", old=job()) == []


@pytest.mark.parametrize(
    "attempt",
    [
        job(sa="default"),
        job(image="ghcr.io/mallory/miner:1"),
        job(initContainers=[{"name": "x", "image": IMAGE}]),
        job(ephemeralContainers=[{"name": "x", "image": IMAGE}]),
    ],
    ids=["other-serviceaccount", "other-image", "init-container", "ephemeral-container"],
)
def test_jobs_run_only_the_aligner(policy: Policy, attempt: dict[str, Any]) -> None:
    assert ask(policy, "CREATE", "jobs", group="batch", obj=attempt) == [
        "the operator runs only the aligner (its ServiceAccount and image, one container)"
    ]


def test_nothing_is_written_outside_its_own_namespaces(policy: Policy) -> None:
    wrote_elsewhere = "the operator writes only in the tenant namespaces it created"
    assert wrote_elsewhere in ask(policy, "CREATE", "jobs", group="batch", namespace="kube-system", obj=job())
    secret = {"metadata": {"name": "s"}, "data": {}}
    assert ask(policy, "CREATE", "secrets", namespace="kube-system", obj=secret) == [wrote_elsewhere]
    assert ask(policy, "UPDATE", "secrets", namespace="kube-system", obj=secret, old=secret) == [wrote_elsewhere]
    assert ask(policy, "CREATE", "secrets", obj=secret) == []


def test_namespaces_only_its_own(policy: Policy) -> None:
    adopt = {"metadata": {"name": "kube-system", "labels": {"app.kubernetes.io/managed-by": "mesial-operator"}}}
    assert ask(policy, "DELETE", "namespaces", old=FOREIGN) != []
    assert ask(policy, "UPDATE", "namespaces", old=FOREIGN, obj=adopt) != []
    assert ask(policy, "CREATE", "namespaces", obj={**adopt}) != []  # not a mesial-org-* name
    assert ask(policy, "CREATE", "namespaces", obj=OWNED) == []
    assert ask(policy, "UPDATE", "namespaces", old=OWNED, obj={"metadata": {"name": TENANT, "labels": {}}}) != []
    assert ask(policy, "DELETE", "namespaces", old=OWNED) == []


def test_bindings_only_the_aligner_role_and_its_own_tenant_role(policy: Policy) -> None:
    def binding(kind: str, role: str, sa: str, sa_ns: str) -> dict[str, Any]:
        return {
            "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
        }

    rbac = "rbac.authorization.k8s.io"
    ok = [
        binding("Role", "mesial-aligner", "mesial-aligner", TENANT),
        binding("ClusterRole", "rel-mesial-operator-tenant", "rel-mesial-operator", "mesial-system"),
    ]
    bad = [
        binding("ClusterRole", "rel-mesial-operator-tenant", "mesial-aligner", TENANT),
        binding("ClusterRole", "cluster-admin", "rel-mesial-operator", "mesial-system"),
        binding("Role", "mesial-aligner", "default", "kube-system"),
    ]
    for obj in ok:
        assert ask(policy, "CREATE", "rolebindings", group=rbac, obj=obj) == [], obj
    for obj in bad:
        assert ask(policy, "CREATE", "rolebindings", group=rbac, obj=obj) != [], obj


def test_other_users_are_not_concerned(policy: Policy) -> None:
    admin = "system:serviceaccount:kube-system:admin"
    assert ask(policy, "CREATE", "jobs", group="batch", namespace="kube-system", obj=job(sa="x"), user=admin) == []
    assert ask(policy, "DELETE", "namespaces", old=FOREIGN, user=admin) == []


def test_the_policy_follows_the_release_and_image(k8s_tools: dict[str, Path]) -> None:
    docs = render(k8s_tools, "--set", "global.image.tag=9.9.9", "--set", "fullnameOverride=lab")
    (doc,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == doc["metadata"]["name"] == "lab-operator-guard"
    other = Policy(doc)
    user = "system:serviceaccount:mesial-system:lab-operator"
    assert ask(other, "CREATE", "jobs", group="batch", obj=job(image="ghcr.io/mesial/mesial:9.9.9"), user=user) == []
    assert ask(other, "CREATE", "jobs", group="batch", obj=job(), user=user) != []
    assert not [
        d for d in render(k8s_tools, "--set", "operator.admissionPolicy.enabled=false") if "Admission" in d["kind"]
    ]


# What the chart supports, and why: the Organization CRD's CEL rules use the CIDR library
# (`isCIDR`, `cidr()`), which kube-apiserver offers to new rules from 1.31 (introduced in 1.30's
# CEL environment, usable once 1.30 is the minimum compatibility version, i.e. from 1.31), and the
# admission policy is admissionregistration.k8s.io/v1 (GA in 1.30). Below that, `helm install`
# refuses at once rather than failing half-way on the CRD.
@pytest.mark.parametrize("version", ["1.27.16", "1.28.15", "1.29.0", "1.30.14"])
def test_a_cluster_older_than_1_31_is_refused_by_the_chart(k8s_tools: dict[str, Path], version: str) -> None:
    result = helm(k8s_tools, "template", "rel", str(CHART), "--kube-version", version, check=False)
    assert result.returncode != 0
    assert "kubeVersion: >=1.31.0-0" in result.stderr and f"v{version}" in result.stderr, result.stderr


@pytest.mark.parametrize("version", ["1.31.0", "1.33.4", "1.35.4"])
def test_from_1_31_the_admission_policy_is_installed(k8s_tools: dict[str, Path], version: str) -> None:
    kinds = {d["kind"]: d for d in render(k8s_tools, "--kube-version", version)}
    assert kinds["ValidatingAdmissionPolicy"]["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert kinds["ValidatingAdmissionPolicyBinding"]["apiVersion"] == "admissionregistration.k8s.io/v1"


# A cluster's discovery (what `helm install` sees, or `helm template --api-versions`) that serves
# admission webhooks but not ValidatingAdmissionPolicy (switched off by --runtime-config): the
# chart says so instead of installing an operator its RBAC alone would not confine.
def test_a_cluster_without_the_policy_api_is_refused_unless_the_policy_is_disabled(
    k8s_tools: dict[str, Path],
) -> None:
    webhooks = ("--api-versions", "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration")
    refused = helm(k8s_tools, "template", "rel", str(CHART), *webhooks, check=False)
    assert refused.returncode != 0
    assert "does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy" in refused.stderr
    assert "operator.admissionPolicy.enabled=false" in refused.stderr
    without = render(k8s_tools, *webhooks, "--set", "operator.admissionPolicy.enabled=false")
    assert not [d for d in without if "Admission" in d["kind"]] and any(d["kind"] == "Deployment" for d in without)
    served = (*webhooks, "--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy")
    assert [d for d in render(k8s_tools, *served) if d["kind"] == "ValidatingAdmissionPolicy"]
