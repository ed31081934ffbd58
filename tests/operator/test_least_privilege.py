"""Least privilege, proven: the chart's RBAC grants the operator exactly what it uses.

Every request the operator makes to the emulator during the session is recorded
(``Emulator.request_log``). This module runs after the other operator tests (conftest orders
it last) and judges the whole log against the roles ``helm template`` renders: no request
the rules would refuse (RBAC evaluated as kube-apiserver does, escalation checks included,
``tests/operator/rbac.py``), and no rule (group, resource, verb) that nothing used. The first
test drives the one path the rest of the suite does not: each owned kind edited by hand and
restored by the operator.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesial.operator.testing import Harness, RecordedRequest
from tests.operator.admission import Policy, Replay
from tests.operator.conftest import RELEASE, RELEASE_NAMESPACE, eventually, organization_ready
from tests.operator.helpers import events, get
from tests.operator.rbac import Authorizer, rules_of

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RBAC = "rbac.authorization.k8s.io/v1"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-mesial-operator"


def rendered(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(helm), "template", RELEASE, str(ROOT / "charts" / "mesial"), "--namespace", RELEASE_NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def chart_roles(helm: Path) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in rendered(helm) if d["kind"] == "ClusterRole"}


def guard_policy(helm: Path, *args: str) -> Policy:
    (doc,) = [d for d in rendered(helm, *args) if d["kind"] == "ValidatingAdmissionPolicy"]
    return Policy(doc)


def authorizer(helm: Path) -> Authorizer:
    roles = chart_roles(helm)
    operator = f"{RELEASE}-mesial-operator"
    return Authorizer(
        cluster=rules_of(roles[operator]),
        tenant=rules_of(roles[f"{operator}-tenant"]),
        tenant_role=f"{operator}-tenant",
        service_account=(RELEASE_NAMESPACE, operator),
    )


async def test_every_owned_kind_edited_by_hand_is_restored(harness: Harness, org_name: Any) -> None:
    name = org_name("handedit")
    ns = f"mesial-org-{name}"
    k8s = harness.client
    await organization_ready(k8s, name)
    edits: list[tuple[str, str, str, dict[str, Any]]] = [
        ("v1", "Namespace", ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
        ("v1", "ServiceAccount", "mesial-aligner", {"automountServiceAccountToken": True}),
        ("v1", "Secret", "mesial-store", {"data": {"access-key": "c3RvbGVu"}}),
        ("v1", "ResourceQuota", "mesial-quota", {"spec": {"hard": {"pods": "999"}}}),
        ("v1", "LimitRange", "mesial-limits", {"spec": {"limits": []}}),
        (RBAC, "Role", "mesial-aligner", {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        (
            RBAC,
            "RoleBinding",
            "mesial-aligner",  # roleRef is immutable on a real server: the operator replaces the binding
            {
                "subjects": [{"kind": "User", "name": "mallory"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            },
        ),
        (RBAC, "RoleBinding", "mesial-operator", {"subjects": [{"kind": "User", "name": "mallory"}]}),
        ("networking.k8s.io/v1", "NetworkPolicy", "mesial-default-deny", {"spec": {"podSelector": {"x": "y"}}}),
    ]
    wanted = {}
    for api_version, kind, obj, patch in edits:
        namespace = None if kind == "Namespace" else ns
        wanted[(kind, obj)] = await get(k8s, api_version, kind, obj, namespace)
        await k8s.patch(api_version, kind, obj, patch, namespace)

    async def restored() -> bool:
        for api_version, kind, obj, patch in edits:
            live = await k8s.get(api_version, kind, obj, None if kind == "Namespace" else ns)
            if live is None:  # a RoleBinding is replaced (deleted, then created): gone for a moment
                return False
            for field in patch:
                if field == "metadata":
                    labels = wanted[(kind, obj)]["metadata"]["labels"]
                    if any(live["metadata"]["labels"].get(k) != v for k, v in labels.items()):
                        return False
                elif kind == "Secret":  # the store identity's key may be replaced, never the forged one kept
                    if live["data"]["access-key"] == patch["data"]["access-key"]:
                        return False
                elif live.get(field) != wanted[(kind, obj)].get(field):
                    return False
        return True

    await eventually(restored, timeout=30)

    async def reported() -> bool:
        return any(e["reason"] == "DriftCorrected" for e in await events(k8s, name))

    await eventually(reported)


def test_outside_tenant_namespaces_the_operator_reads_no_secret_and_runs_no_job(
    k8s_tools: dict[str, Path],
) -> None:
    auth = authorizer(k8s_tools["helm"])
    tenant = "mesial-org-acme"
    auth.check("POST", "/api/v1/namespaces", {}, {"metadata": {"name": tenant}})
    for path in ("/api/v1/namespaces/kube-system/secrets/x", f"/api/v1/namespaces/{tenant}/secrets/mesial-store"):
        auth.check("GET", path, {}, None)
    auth.check("GET", "/api/v1/secrets", {}, None)
    auth.check("POST", "/apis/batch/v1/namespaces/kube-system/jobs", {}, {})
    binding = {
        "metadata": {"name": "mesial-operator"},
        "roleRef": {"kind": "ClusterRole", "name": f"{RELEASE}-mesial-operator-tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": f"{RELEASE}-mesial-operator", "namespace": RELEASE_NAMESPACE}],
    }
    auth.check("POST", f"/apis/{RBAC}/namespaces/{tenant}/rolebindings", {}, binding)
    auth.check("GET", f"/api/v1/namespaces/{tenant}/secrets/mesial-store", {}, None)  # now bound: allowed
    auth.check(
        "POST",
        f"/apis/{RBAC}/namespaces/kube-system/rolebindings",
        {},
        binding | {"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}},
    )
    assert auth.refused == [
        "get core/secrets x in kube-system",
        f"get core/secrets mesial-store in {tenant}",
        "list core/secrets (cluster-wide)",
        "create batch/jobs in kube-system",
        "create rbac.authorization.k8s.io/rolebindings in kube-system: may not bind ClusterRole cluster-admin",
    ]


def test_chart_rbac_grants_exactly_what_the_operator_uses(
    operator_requests: list[RecordedRequest], k8s_tools: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    auth = authorizer(k8s_tools["helm"])
    for r in operator_requests:
        auth.check(r.method, r.path, r.query, r.body)
    assert operator_requests, "no request recorded: is the emulator's request_log set?"
    assert not auth.refused, "the chart's RBAC refuses requests the operator makes:\n" + "\n".join(
        sorted(set(auth.refused))
    )
    ran = {Path(str(item.path)).name for item in request.session.items}
    suite = {p.name for p in HERE.glob("test_*.py")}
    if not suite <= ran:
        pytest.skip(f"unused rules are judged over the whole operator suite; not run: {sorted(suite - ran)}")
    unused = auth.unused()
    assert not unused, "rules nothing used (remove them):\n" + "\n".join(unused)


def test_the_admission_policy_admits_every_write_the_operator_made(
    operator_requests: list[RecordedRequest], k8s_tools: dict[str, Path]
) -> None:
    replay = Replay(guard_policy(k8s_tools["helm"]), OPERATOR_USER)
    for r in operator_requests:
        replay.feed(r.method, r.path, r.query, r.body)
    assert not replay.denied, "the operator's admission policy denies:\n" + "\n".join(sorted(set(replay.denied)))
    assert len(replay.objects) > 1, "nothing was written: is the emulator's request_log set?"
