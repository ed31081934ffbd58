"""Small helpers shared by the operator tests."""

from __future__ import annotations

from typing import Any

import hvac

from mesial.common.audit_sinks import JsonlAuditSink
from mesial.common.settings import Settings
from mesial.operator.k8s import K8s

ORG = ("mesial.dev/v1alpha1", "Organization")
SCANJOB = ("mesial.dev/v1alpha1", "ScanJob")
POLICY = ("mesial.dev/v1alpha1", "RetentionPolicy")


def organization(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mesial.dev/v1alpha1",
        "kind": "Organization",
        "metadata": {"name": name},
        "spec": {"displayName": f"Lab {name}", "tier": "small", "keyRotationPeriod": "720h", **spec},
    }


async def status(k8s: K8s, name: str) -> dict[str, Any]:
    obj = await k8s.get(*ORG, name)
    return dict((obj or {}).get("status") or {})


async def ready(k8s: K8s, name: str) -> dict[str, Any] | None:
    st = await status(k8s, name)
    return st if st.get("phase") == "Ready" else None


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


async def events(k8s: K8s, name: str) -> list[dict[str, Any]]:
    return [e for e in await k8s.list("v1", "Event") if e.get("involvedObject", {}).get("name") == name]


def vault(settings: Settings) -> hvac.Client:
    return hvac.Client(url=settings.vault.addr, token=settings.vault.token.get_secret_value())


async def get(k8s: K8s, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    """The object, which must exist."""
    obj = await k8s.get(api_version, kind, name, namespace)
    assert obj is not None, f"{kind} {namespace}/{name} does not exist"
    return obj


def audit_events(runtime: Any) -> list[dict[str, Any]]:
    sink = runtime.audit
    assert isinstance(sink, JsonlAuditSink)
    return sink.read()
