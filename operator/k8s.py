"""A small Kubernetes client over kubernetes_asyncio: raw JSON objects, merge patches, typed errors.

The operator works on plain dicts (as kopf hands them over), so this wrapper speaks
JSON paths rather than the generated model classes. Every write is a create or a JSON
merge patch (RFC 7386): the one patch type every API server (and the kmock emulator)
applies the same way. ``apply`` brings an object to its desired state and says what it
changed, which is how drift is detected and reported.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

Obj = dict[str, Any]

# Top-level fields of an object that the operator owns entirely (compared exactly).
_BODY_FIELDS = ("spec", "rules", "subjects", "roleRef", "automountServiceAccountToken", "data")
_CORE_GROUP = ""


class K8sError(Exception):
    """The API server refused or failed a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(status, reason, message)

    def __str__(self) -> str:
        return f"Kubernetes API {self.status} {self.reason}: {self.message}"[:500]

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        return self.status in (0, 408, 425, 429) or self.status >= 500


class Change(enum.StrEnum):
    """What ``apply`` did."""

    unchanged = "unchanged"
    created = "created"
    updated = "updated"


@dataclass(frozen=True)
class Applied:
    """The outcome of ``apply``: the change, a short account of what differed, the object."""

    change: Change
    what: str
    kind: str
    namespace: str | None
    name: str

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


# plural, namespaced, by apiVersion + kind: the kinds the operator touches.
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "ResourceQuota"): ("resourcequotas", True),
    ("v1", "LimitRange"): ("limitranges", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Event"): ("events", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): ("selfsubjectaccessreviews", False),
    ("mesial.dev/v1alpha1", "Organization"): ("organizations", False),
    ("mesial.dev/v1alpha1", "ScanJob"): ("scanjobs", True),
    ("mesial.dev/v1alpha1", "RetentionPolicy"): ("retentionpolicies", True),
}


def resource_path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of a kind (collection if ``name`` is None)."""
    plural, namespaced = KINDS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


def merge_patch(actual: Any, desired: Any) -> Any:
    """The RFC 7386 merge patch that turns ``actual`` into ``desired`` (None: nothing to do)."""
    if isinstance(actual, Mapping) and isinstance(desired, Mapping):
        patch: dict[str, Any] = {}
        for key, value in desired.items():
            if key not in actual:
                patch[key] = value
            else:
                sub = merge_patch(actual[key], value)
                if sub is not None:
                    patch[key] = sub
        for key in actual:
            if key not in desired:
                patch[key] = None
        return patch or None
    if actual == desired:
        return None
    if isinstance(desired, Mapping):
        return dict(desired)
    return desired


def _describe(patch: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of what a patch changes, for events ("spec.egress", "metadata.labels.x")."""
    paths: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and len(paths) < 6:
            paths.extend(_describe(value, path + "."))
        else:
            paths.append(path)
    return paths


class K8s:
    """Raw-object access to one API server, with request counting for the benchmark."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api
        self.requests = 0

    @classmethod
    def for_server(cls, server: str, token: str | None = None, *, verify_ssl: bool = True) -> K8s:
        configuration = k8s_client.Configuration(host=server)
        configuration.verify_ssl = verify_ssl
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(k8s_client.ApiClient(configuration))

    @classmethod
    async def from_environment(cls) -> K8s:
        """In-cluster ServiceAccount credentials, else the local kubeconfig."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=configuration)
        return cls(k8s_client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    # -- raw requests ------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        self.requests += 1
        try:
            response = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=30,
            )
            data = await response.read()
            status = int(response.status)
        except (TimeoutError, OSError) as exc:
            raise K8sError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        except k8s_client.ApiException as exc:
            raise K8sError(int(exc.status or 0), str(exc.reason or "Error"), "request failed") from exc
        if not 200 <= status <= 299:
            reason, message = "Error", data.decode(errors="replace")[:300]
            try:
                payload = json.loads(data)
                reason, message = str(payload.get("reason", reason)), str(payload.get("message", message))
            except (ValueError, AttributeError):
                pass
            raise K8sError(status, reason, message)
        return json.loads(data) if data else None

    # -- objects -------------------------------------------------------------------------
    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        try:
            result: Obj = await self.request("GET", resource_path(api_version, kind, namespace, name))
        except K8sError as exc:
            if exc.not_found:
                return None
            raise
        return result

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Obj]:
        """Objects of a kind; label and namespace filters are also checked here, not only by the server."""
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        result = await self.request("GET", resource_path(api_version, kind, namespace), query=query)
        items: list[Obj] = list(result.get("items", [])) if result else []
        return [
            item
            for item in items
            if (namespace is None or item.get("metadata", {}).get("namespace") == namespace)
            and all(item.get("metadata", {}).get("labels", {}).get(k) == v for k, v in (labels or {}).items())
        ]

    async def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        result: Obj = await self.request("POST", path, obj)
        return result

    async def patch(
        self, api_version: str, kind: str, name: str, patch: Obj, namespace: str | None = None, *, status: bool = False
    ) -> Obj:
        path = resource_path(api_version, kind, namespace, name) + ("/status" if status else "")
        result: Obj = await self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        return result

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, propagation: str = "Background"
    ) -> bool:
        """Delete an object; False if it was already gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", resource_path(api_version, kind, namespace, name), body)
        except K8sError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def apply(self, desired: Obj) -> Applied:
        """Create ``desired`` or bring the live object back to it; report what changed.

        Owned body fields (spec, rules, subjects, ...) must equal the desired ones exactly;
        labels and annotations must contain the desired ones (others are left alone).
        """
        api_version, kind = desired["apiVersion"], desired["kind"]
        meta = desired["metadata"]
        name, namespace = meta["name"], meta.get("namespace")
        actual = await self.get(api_version, kind, name, namespace)
        if actual is None:
            try:
                await self.create(desired)
                return Applied(Change.created, "was missing", kind, namespace, name)
            except K8sError as exc:
                if not exc.conflict:
                    raise
                actual = await self.get(api_version, kind, name, namespace)
                if actual is None:
                    raise
        patch: Obj = {}
        for field in _BODY_FIELDS:
            if field in desired:
                sub = merge_patch(actual.get(field), desired[field])
                if sub is not None:
                    patch[field] = sub
        for field in ("labels", "annotations"):
            wanted = meta.get(field) or {}
            have = actual.get("metadata", {}).get(field) or {}
            changed = {k: v for k, v in wanted.items() if have.get(k) != v}
            if changed:
                patch.setdefault("metadata", {})[field] = changed
        if not patch:
            return Applied(Change.unchanged, "", kind, namespace, name)
        if kind == "RoleBinding" and "roleRef" in patch:  # roleRef is immutable: replace the binding
            await self.delete(api_version, kind, name, namespace)
            await self.create(desired)
            return Applied(Change.updated, "roleRef replaced", kind, namespace, name)
        await self.patch(api_version, kind, name, patch, namespace)
        return Applied(Change.updated, "edited: " + ", ".join(_describe(patch)), kind, namespace, name)
