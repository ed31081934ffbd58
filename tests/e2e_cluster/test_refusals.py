"""The teardown check of every e2e scenario (``operator_authorised``) reads the API server's audit
log: which refusals of the operator it counts, on events shaped as kube-apiserver writes them (the
uninstall below as `helm uninstall` and `helm install` ran in tests/e2e_cluster/test_release.py).
No cluster is started here."""

from __future__ import annotations

from typing import Any

from tests.e2e_cluster.conftest import BINDING_RACE_S, refused

OPERATOR = "system:serviceaccount:mesial-system:mesial-operator"
ADMIN = "mesial-test-admin"
GRANTS = frozenset({"mesial-operator"})  # its ClusterRoleBinding and the ClusterRole it binds


def event(
    second: float, user: str, verb: str, resource: str, code: int, name: str = "", namespace: str = ""
) -> dict[str, Any]:
    stamp = f"2026-12-06T22:51:{second:09.6f}Z"
    ref = {"resource": resource, "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"}
    if name:
        ref["name"] = name
    if namespace:
        ref["namespace"] = namespace
    uri = (
        f"/apis/rbac.authorization.k8s.io/v1/{resource}/{name}" if verb != "list" else f"/apis/mesial.dev/v1/{resource}"
    )
    status: dict[str, Any] = {"metadata": {}, "code": code}
    if code == 403:
        status["message"] = f'{resource} is forbidden: User "{user}" cannot {verb} resource "{resource}"'
    return {
        "user": {"username": user},
        "verb": verb,
        "objectRef": ref,
        "requestURI": uri,
        "responseStatus": status,
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }


def uninstall(at: float) -> list[dict[str, Any]]:
    """`helm uninstall`: the binding goes first, then the ClusterRoles."""
    return [
        event(at, ADMIN, "delete", "clusterrolebindings", 200, "mesial-operator"),
        event(at + 0.01, ADMIN, "delete", "clusterroles", 200, "mesial-operator-tenant"),
        event(at + 0.01, ADMIN, "delete", "clusterroles", 200, "mesial-operator"),
    ]


def install(at: float) -> list[dict[str, Any]]:
    """`helm install`: server-side apply, a patch answered 201 per object created."""
    return [
        event(at, ADMIN, "patch", "clusterroles", 201, "mesial-operator"),
        event(at, ADMIN, "patch", "clusterroles", 201, "mesial-operator-tenant"),
        event(at + 0.01, ADMIN, "patch", "clusterrolebindings", 201, "mesial-operator"),
    ]


def counted(events: list[dict[str, Any]]) -> list[float]:
    """The seconds of the refusals the teardown check would fail on."""
    return [r.time.second + r.time.microsecond / 1e6 for r in refused(events, OPERATOR, GRANTS) if not r.unbound]


def test_the_old_operator_refused_after_uninstall_took_its_binding_is_not_counted() -> None:
    # As in CI at 46aac82: the terminating operator pod re-listed Organizations after its binding was gone.
    events = [*uninstall(30), event(38, OPERATOR, "list", "organizations", 403), *install(45)]
    (refusal,) = refused(events, OPERATOR, GRANTS)
    assert refusal.unbound and refusal.verb == "list"
    assert counted(events) == []


def test_a_refusal_before_the_uninstall_or_after_the_install_is_counted() -> None:
    events = [
        event(10, OPERATOR, "list", "organizations", 403),
        *uninstall(30),
        *install(45),
        event(46, OPERATOR, "list", "organizations", 403),
    ]
    assert counted(events) == [10, 46]


def test_a_refusal_while_the_release_is_still_gone_is_not_counted() -> None:
    events = [*uninstall(30), event(31, OPERATOR, "list", "organizations", 403)]
    assert counted(events) == []


def test_only_the_operators_own_grants_open_a_window() -> None:
    # Another ClusterRoleBinding deleted (the API's) takes nothing from the operator.
    events = [
        event(30, ADMIN, "delete", "clusterrolebindings", 200, "mesial-api"),
        event(31, OPERATOR, "list", "organizations", 403),
    ]
    assert counted(events) == [31]
    # A delete that failed removed nothing.
    events = [
        event(30, ADMIN, "delete", "clusterrolebindings", 404, "mesial-operator"),
        event(31, OPERATOR, "list", "organizations", 403),
    ]
    assert counted(events) == [31]
    # Without grants named, every refusal counts.
    events = [*uninstall(30), event(31, OPERATOR, "list", "organizations", 403)]
    assert [r.unbound for r in refused(events, OPERATOR)] == [False]


def test_the_binding_race_is_flagged_in_the_namespace_just_bound() -> None:
    events = [
        event(30, OPERATOR, "create", "rolebindings", 201, "mesial-operator", "mesial-org-a"),
        event(30 + BINDING_RACE_S / 2, OPERATOR, "get", "secrets", 403, "x", "mesial-org-a"),
        event(30 + BINDING_RACE_S / 2, OPERATOR, "get", "secrets", 403, "x", "mesial-org-b"),
        event(30 + BINDING_RACE_S * 2, OPERATOR, "get", "secrets", 403, "x", "mesial-org-a"),
    ]
    assert [r.binding_race for r in refused(events, OPERATOR, GRANTS)] == [True, False, False]
    assert len(counted(events)) == 3  # flagged, and still counted by the strict check
