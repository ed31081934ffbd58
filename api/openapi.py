"""The OpenAPI 3.1 document, generated from the route declarations (``Spec``) and pydantic."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute

from mesial.api import schemas
from mesial.api.routing import Spec

_PARAM_RE = re.compile(r"{([a-z_]+)}")
_ERRORS = {
    "401": "No valid credential",
    "403": "Role not allowed",
    "404": "Not found in the caller's organization",
    "422": "Validation failed",
    "429": "Rate limited",
}


def specs(routes: list[BaseRoute]) -> list[Spec]:
    found = [getattr(getattr(r, "endpoint", None), "spec", None) for r in routes]
    return [s for s in found if isinstance(s, Spec)]


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def query(self, model: type[BaseModel]) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        self.schemas.update(schema.pop("$defs", {}))
        required = set(schema.get("required", []))
        return [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()
        ]


def _operation(spec: Spec, components: _Components) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": f"{spec.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', spec.path.lower()).strip('_')}",
        "x-roles": sorted(r.value for r in spec.roles),
        "security": [] if spec.public else [{"bearer": []}],
    }
    if spec.action:
        op["x-audit-action"] = spec.action
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 512}}
        for name in _PARAM_RE.findall(spec.path)
    ]
    if spec.query is not None:
        params += components.query(spec.query)
    if params:
        op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": components.ref(spec.body)}}}
    elif spec.raw_body:
        binary = {"schema": {"type": "string", "format": "binary"}}
        op["requestBody"] = {"required": True, "content": dict.fromkeys(spec.raw_body, binary)}
    responses: dict[str, Any] = {}
    if spec.status == 204:
        responses["204"] = {"description": "Done"}
    elif spec.response is not None:
        for status, description in ((spec.status, "OK"), *spec.also):
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": components.ref(spec.response)}},
            }
    elif spec.produces != "application/json":
        responses[str(spec.status)] = {
            "description": "OK",
            "content": {spec.produces: {"schema": {"type": "string"}}},
        }
    else:
        responses[str(spec.status)] = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    error = {"content": {"application/json": {"schema": components.ref(schemas.Error)}}}
    for code, text in _ERRORS.items():
        if code in ("401", "403") and spec.public:
            continue
        responses[code] = {"description": text, **error}
    responses["default"] = {"description": "Error", **error}
    op["responses"] = responses
    return op


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    components = _Components()
    paths: dict[str, Any] = {}
    for spec in specs(routes):
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mesial tenant API",
            "version": "1",
            "description": "Scans, alignment jobs, artifacts and audit export. Tenancy comes from the credential.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


ROLE_COLUMNS = ("org-admin", "clinician", "technician", "auditor", "platform-admin", "service")


def role_table(routes: list[BaseRoute]) -> str:
    """The role × route table of ``docs/api.md`` (``public`` routes need no credential)."""
    head = "| method | path | " + " | ".join(ROLE_COLUMNS) + " | audited as |"
    rule = "|---|---|" + "---|" * len(ROLE_COLUMNS) + "---|"
    rows = [head, rule]
    for spec in specs(routes):
        if spec.public:
            cells = ["public"] * len(ROLE_COLUMNS)
        else:
            cells = ["yes" if any(r.value == col for r in spec.roles) else "-" for col in ROLE_COLUMNS]
        rows.append(f"| {spec.method} | `{spec.path}` | " + " | ".join(cells) + f" | {spec.action or '-'} |")
    return "\n".join(rows) + "\n"
