"""A ValidatingAdmissionPolicy evaluated as kube-apiserver does: match, match conditions, variables, validations.

The CEL expressions run in cel-python (the Kubernetes CEL libraries beyond standard CEL are not
available there: the chart's policy uses none). An expression that fails to evaluate denies, as
``failurePolicy: Fail`` does. :class:`Replay` feeds a request log through the policy with the
objects those requests left behind, so that ``oldObject`` and ``namespaceObject`` are what the
API server would hand over.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from tests.operator.rbac import attributes

OPERATIONS = {"create": "CREATE", "patch": "UPDATE", "update": "UPDATE", "delete": "DELETE"}


def _program(env: celpy.Environment, expression: str) -> Any:
    return env.program(env.compile(expression))


@dataclass
class Policy:
    doc: dict[str, Any]
    programs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        env = celpy.Environment()
        spec = self.doc["spec"]
        for item in spec.get("matchConditions", []):
            self.programs[f"match:{item['name']}"] = _program(env, item["expression"])
        for item in spec.get("variables", []):
            self.programs[f"var:{item['name']}"] = _program(env, item["expression"])
        for i, item in enumerate(spec.get("validations", [])):
            self.programs[f"rule:{i}"] = _program(env, item["expression"])

    def matches(self, group: str, resource: str, operation: str) -> bool:
        for rule in self.doc["spec"]["matchConstraints"]["resourceRules"]:
            if (
                (group in rule["apiGroups"] or "*" in rule["apiGroups"])
                and (resource in rule["resources"] or "*" in rule["resources"])
                and (operation in rule["operations"] or "*" in rule["operations"])
            ):
                return True
        return False

    def denials(
        self,
        *,
        username: str,
        operation: str,
        group: str,
        resource: str,
        namespace: str,
        name: str,
        obj: Any,
        old: Any,
        namespace_object: Any,
    ) -> list[str]:
        """The messages of the validations that deny this request ([] when admitted or not matched)."""
        if not self.matches(group, resource, operation):
            return []
        request = {
            "operation": operation,
            "userInfo": {"username": username},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": namespace,
            "name": name,
        }
        activation: dict[str, Any] = {
            "request": json_to_cel(request),
            "object": json_to_cel(obj),
            "oldObject": json_to_cel(old),
            "namespaceObject": json_to_cel(namespace_object),
        }
        for key, program in self.programs.items():
            if key.startswith("match:") and not _true(program, activation):
                return []  # (an error here would deny under failurePolicy: Fail; ours cannot fail)
        variables: dict[Any, Any] = {}
        for item in self.doc["spec"].get("variables", []):
            # an error stays the variable's value: `true || error` is true in CEL, as the API server's lazy
            # variables are never evaluated where a short-circuit skips them
            program = self.programs[f"var:{item['name']}"]
            try:
                value = program.evaluate({**activation, "variables": celtypes.MapType(variables)})
            except CELEvalError as exc:
                value = exc
            variables[celtypes.StringType(item["name"])] = value
        activation["variables"] = celtypes.MapType(variables)
        denied = []
        for i, item in enumerate(self.doc["spec"]["validations"]):
            if not _true(self.programs[f"rule:{i}"], activation):
                denied.append(item.get("message", item["expression"]))
        return denied


def _true(program: Any, activation: dict[str, Any]) -> bool:
    """Whether the expression is true; an evaluation error counts as false (``failurePolicy: Fail``)."""
    try:
        result = program.evaluate(activation)
    except CELEvalError:
        return False
    return isinstance(result, celtypes.BoolType) and bool(result)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


@dataclass
class Replay:
    """The objects a request log leaves behind, and the policy's verdict on each write in it."""

    policy: Policy
    username: str
    objects: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    denied: list[str] = field(default_factory=list)

    def feed(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        a = attributes(method, path, query)
        operation = OPERATIONS.get(a.verb)
        if operation is None or a.subresource:
            return
        name = a.name or (body or {}).get("metadata", {}).get("name", "")
        namespace = "" if a.resource == "namespaces" else a.namespace
        key = (a.resource, namespace, name)
        old = self.objects.get(key)
        if operation == "CREATE":
            new = body
        elif operation == "UPDATE":
            new = merge(old, body) if old is not None else body
        else:
            new = None
        ns_object = self.objects.get(("namespaces", "", namespace)) if namespace else None
        reasons = self.policy.denials(
            username=self.username,
            operation=operation,
            group=a.group,
            resource=a.resource,
            namespace=namespace,
            name=name,
            obj=new,
            old=old,
            namespace_object=ns_object,
        )
        if reasons:
            self.denied.append(f"{a}: {'; '.join(reasons)}")
            return
        if new is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = new
