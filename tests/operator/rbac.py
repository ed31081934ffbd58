"""Kubernetes RBAC, evaluated as kube-apiserver does, over the requests the operator made.

:func:`attributes` is the API server's ``RequestInfoFactory`` (verb, API group, resource,
subresource, namespace, name of an HTTP request); :class:`Authorizer` grants a request when a
rule of the chart's operator ClusterRole (or of ``system:basic-user``, every authenticated user's) matches it, or, in a namespace where the operator has
bound itself to the tenant ClusterRole (its ``mesial-operator`` RoleBinding, followed in the
request log), a rule of that role. Writing a Role or a RoleBinding also needs what the API
server's escalation check needs: the rights granted (or ``bind`` on the role referenced).
Every rule's (group, resource, verb) triples that some request or check needed are recorded,
so that rules nothing uses can be named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# Paths every authenticated user may read (the system:discovery and system:public-info-viewer roles).
DISCOVERY = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")
TENANT_BINDING = "mesial-operator"


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def resource_request(self) -> bool:
        return bool(self.resource)

    def __str__(self) -> str:
        if not self.resource_request:
            return f"{self.verb} {self.path}"
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {self.group or 'core'}/{res}{' ' + self.name if self.name else ''}{where}"


def attributes(method: str, path: str, query: dict[str, str]) -> Attributes:
    """What RBAC sees of a request (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go)."""
    verb = VERBS.get(method.upper(), method.lower())
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) < 3 or parts[0] not in ("api", "apis") or (parts[0] == "apis" and len(parts) < 4):
        return Attributes(verb, path=path)
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if verb == "get" and not name:
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
    if verb == "delete" and not name:
        verb = "deletecollection"
    return Attributes(verb, group, resource, subresource, namespace, name, path)


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a role, numbered for reports: ``<role>#<index>``."""

    role: str
    index: int
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()

    def triples(self) -> set[tuple[str, str, str]]:
        return {(g, r, v) for g in self.groups for r in self.resources for v in self.verbs}

    def matches(self, a: Attributes) -> tuple[str, str, str] | None:
        res = a.resource + (f"/{a.subresource}" if a.subresource else "")
        if a.verb not in self.verbs and "*" not in self.verbs:
            return None
        if a.group not in self.groups and "*" not in self.groups:
            return None
        if res not in self.resources and "*" not in self.resources:
            return None
        if self.names and a.name not in self.names:
            return None
        return (a.group, res, a.verb)


# What every authenticated user may do (kube-apiserver's bootstrap role system:basic-user): ask the
# authorizer about itself. The operator asks whether its new tenant binding is in effect yet.
BASIC_USER = (
    Rule(
        "system:basic-user",
        0,
        ("authorization.k8s.io",),
        ("selfsubjectaccessreviews", "selfsubjectrulesreviews"),
        ("create",),
    ),
    Rule("system:basic-user", 1, ("authentication.k8s.io",), ("selfsubjectreviews",), ("create",)),
)


def rules_of(role: dict[str, Any]) -> list[Rule]:
    name = role["metadata"]["name"]
    return [
        Rule(
            name,
            i,
            tuple(r.get("apiGroups", [])),
            tuple(r.get("resources", [])),
            tuple(r.get("verbs", [])),
            tuple(r.get("resourceNames", [])),
        )
        for i, r in enumerate(role.get("rules") or [])
    ]


@dataclass
class Authorizer:
    cluster: list[Rule]
    tenant: list[Rule]
    tenant_role: str
    service_account: tuple[str, str]  # namespace, name
    bound: set[str] = field(default_factory=set)
    roles: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    used: set[tuple[str, int, tuple[str, str, str]]] = field(default_factory=set)
    refused: list[str] = field(default_factory=list)

    def _rules_for(self, namespace: str) -> Iterable[Rule]:
        yield from BASIC_USER
        yield from self.cluster
        if namespace and namespace in self.bound:
            yield from self.tenant

    def allowed(self, a: Attributes) -> bool:
        if not a.resource_request:
            return any(a.path == p or a.path.startswith(p + "/") for p in DISCOVERY)
        hits = [(rule, t) for rule in self._rules_for(a.namespace) if (t := rule.matches(a)) is not None]
        for rule, triple in hits:
            self.used.add((rule.role, rule.index, triple))
        return bool(hits)

    def _holds(self, namespace: str, rules: list[dict[str, Any]]) -> list[str]:
        """The API server's escalation check: what of ``rules`` the operator lacks in ``namespace``."""
        missing = []
        for rule in rules:
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        res, _, sub = r.partition("/")
                        if not self.allowed(Attributes(v, g, res, sub, namespace)):
                            missing.append(f"{v} {g or 'core'}/{r}")
        return missing

    def check(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        a = attributes(method, path, query)
        if not self.allowed(a):
            self.refused.append(str(a))
            return
        body = body if isinstance(body, dict) else {}
        if a.group == "rbac.authorization.k8s.io" and a.verb in ("create", "patch", "update"):
            self._escalation(a, body)
        elif a.resource == "namespaces" and a.verb == "delete":
            self.bound.discard(a.name)

    def _escalation(self, a: Attributes, body: dict[str, Any]) -> None:
        name = a.name or body.get("metadata", {}).get("name", "")
        if a.resource == "roles" and "rules" in body:
            missing = self._holds(a.namespace, body["rules"])
            if missing:
                self.refused.append(f"{a}: escalation, the operator lacks {', '.join(missing)}")
            else:
                self.roles[(a.namespace, name)] = body["rules"]
        if a.resource == "rolebindings" and "roleRef" in body:
            ref = body["roleRef"]
            if ref["kind"] == "ClusterRole":
                bind = Attributes("bind", "rbac.authorization.k8s.io", "clusterroles", "", "", ref["name"])
                if not self.allowed(bind):
                    self.refused.append(f"{a}: may not bind ClusterRole {ref['name']}")
                    return
                subjects = {(s.get("namespace", ""), s["name"]) for s in body.get("subjects", [])}
                if ref["name"] == self.tenant_role and subjects == {self.service_account}:
                    self.bound.add(a.namespace)
            else:
                missing = self._holds(a.namespace, self.roles.get((a.namespace, ref["name"]), []))
                if missing:
                    self.refused.append(f"{a}: escalation, the operator lacks {', '.join(missing)}")

    def unused(self) -> list[str]:
        out = []
        for rule in [*self.cluster, *self.tenant]:
            for triple in sorted(rule.triples()):
                if (rule.role, rule.index, triple) not in self.used:
                    names = f" {list(rule.names)}" if rule.names else ""
                    out.append(f"{rule.role} rule {rule.index}: {triple[2]} {triple[0] or 'core'}/{triple[1]}{names}")
        return out
