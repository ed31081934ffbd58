"""The operator's least privilege on the real API server: the chart's RBAC and its admission policy
(policies/admission/operator-guard.yaml) as kube-apiserver enforces them, for a client holding the
operator's identity (impersonated: what a stolen token could do)."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.e2e_cluster.conftest import NAMESPACE, Kube, Release, eventually

OWNER = {"app.kubernetes.io/managed-by": "mesial-operator"}
NS = "mesial-org-e2e-guard"


def as_operator(
    kube: Kube, release: Release, *args: str, obj: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    user = f"system:serviceaccount:{release.namespace}:{release.operator_sa}"
    if obj is not None:
        return kube("--as", user, *args, "-f", "-", check=False, input=yaml.safe_dump(obj))
    return kube("--as", user, *args, check=False)


def job(image: str, service_account: str = "mesial-aligner") -> dict[str, Any]:
    pod = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "containers": [{"name": "aligner", "image": image, "command": ["mesial", "--version"]}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "guard-probe", "namespace": NS},
        "spec": {"template": {"spec": pod}},
    }


def binding(namespace: str, role_kind: str, role: str, sa: str, sa_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "mesial-operator", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
    }


def test_the_operator_identity_is_confined(kube: Kube, release: Release) -> None:
    manifest = yaml.safe_load_all(kube("get", "deploy", "-n", NAMESPACE, "-o", "yaml").stdout)
    (deployments,) = manifest
    (operator,) = [d for d in deployments["items"] if d["metadata"]["name"].endswith("-operator")]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    image, tenant_role = env["MESIAL_OPERATOR__ALIGNER_IMAGE"], env["MESIAL_OPERATOR__TENANT_CLUSTER_ROLE"]

    # RBAC: no Secret read, no Job, outside the namespaces it was bound into
    refused = as_operator(kube, release, "get", "secrets", "-n", "kube-system")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    assert as_operator(kube, release, "auth", "can-i", "create", "jobs", "-n", "default").stdout.strip() == "no"
    assert as_operator(kube, release, "auth", "can-i", "list", "secrets", "-A").stdout.strip() == "no"

    # admission: no namespace but its own kind, no adoption or deletion of someone else's
    evil = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "evil-guard", "labels": OWNER}}
    denied = as_operator(kube, release, "create", obj=evil)
    assert denied.returncode != 0 and "mesial-org-* namespaces" in denied.stderr, denied.stderr
    kube("create", "namespace", "victim-guard")
    adopt = as_operator(
        kube, release, "label", "namespace", "victim-guard", "app.kubernetes.io/managed-by=mesial-operator"
    )
    assert adopt.returncode != 0 and "only the namespaces it created" in adopt.stderr, adopt.stderr
    delete = as_operator(kube, release, "delete", "namespace", "victim-guard", "--wait=false")
    assert delete.returncode != 0 and "only the namespaces it created" in delete.stderr, delete.stderr
    bound = as_operator(kube, release, "create", obj=binding("victim-guard", "ClusterRole", tenant_role,
                                                              release.operator_sa, release.namespace))  # fmt: skip
    assert bound.returncode != 0 and "only in the tenant namespaces it created" in bound.stderr, bound.stderr

    # its own namespace: created, bound to the tenant role (and to nothing else), aligner Jobs only
    own = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": OWNER}}
    assert as_operator(kube, release, "create", obj=own).returncode == 0
    try:
        admin = as_operator(kube, release, "create", obj=binding(NS, "ClusterRole", "cluster-admin",
                                                                  release.operator_sa, release.namespace))  # fmt: skip
        assert admin.returncode != 0 and "forbidden" in admin.stderr.lower(), admin.stderr
        made = as_operator(kube, release, "create", obj=binding(NS, "ClusterRole", tenant_role,
                                                                 release.operator_sa, release.namespace))  # fmt: skip
        assert made.returncode == 0, made.stderr
        eventually(
            lambda: as_operator(kube, release, "auth", "can-i", "create", "jobs", "-n", NS).stdout.strip() == "yes",
            what="the tenant binding takes effect",
        )
        for attempt, why in (
            (job("ghcr.io/mallory/miner:1"), "runs only the aligner"),
            (job(image, service_account="default"), "runs only the aligner"),
        ):
            refused = as_operator(kube, release, "create", "--dry-run=server", obj=attempt)
            assert refused.returncode != 0 and why in refused.stderr, refused.stderr
        admitted = as_operator(kube, release, "create", "--dry-run=server", obj=job(image))
        assert admitted.returncode == 0, admitted.stderr
        # in its own namespace: a named Secret (the store credentials), never a listing
        can = [
            as_operator(kube, release, "auth", "can-i", *v, "-n", NS).stdout.strip()
            for v in (("get", "secret/mesial-store"), ("list", "secrets"))
        ]
        assert can == ["yes", "no"]
    finally:
        gone = as_operator(kube, release, "delete", "namespace", NS, "--wait=false")
        assert gone.returncode == 0, gone.stderr
        kube("delete", "namespace", "victim-guard", "--wait=false", check=False)
