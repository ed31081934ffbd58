"""One check for every handler: "this is the live tenant namespace the operator created".

The operator marks each tenant namespace it creates with the annotation
:data:`OWNER_ANNOTATION`, whose value is the uid of its Organization. A uid exists only
once the Organization does, so a namespace made beforehand by someone else cannot carry
it; labels can (anyone who creates a namespace sets its labels), which is why neither
the tenant label nor the Organization's status decides. A namespace is a tenant's when
all of these hold in the live objects:

- it carries the tenant label ``<org>`` and is named ``mesial-org-<org>``;
- the Organization ``<org>`` exists and is not being deleted;
- the namespace's owner annotation is that Organization's uid, and it is not terminating.

ScanJobs and RetentionPolicies are admitted through :func:`tenant_namespace`; the
Organization's own sync refuses a namespace it did not create (:func:`owned_by`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesial.common.errors import InputError, MesialError
from mesial.common.settings import Settings
from mesial.common.tenancy import namespace_for, validate_org_name
from mesial.operator.k8s import K8s, Obj

ORG = ("mesial.dev/v1alpha1", "Organization")
OWNER_ANNOTATION = "mesial.dev/organization-uid"


class NotATenantNamespace(MesialError):
    """A namespace that is not the live tenant namespace the operator created."""

    reason = "NotATenantNamespace"


class NamespaceNotOwned(MesialError):
    """``mesial-org-<name>`` exists but the operator did not create it for this Organization."""

    reason = "NamespaceNotOwned"


@dataclass(frozen=True)
class Tenant:
    org: str
    organization: Obj
    namespace: str


def owned_by(namespace: Obj | None, org_uid: str) -> bool:
    """Whether ``namespace`` is the one the operator created for the Organization with ``org_uid``."""
    if namespace is None or not org_uid:
        return False
    meta = namespace.get("metadata") or {}
    return (meta.get("annotations") or {}).get(OWNER_ANNOTATION) == org_uid


async def tenant_namespace(k8s: K8s, namespace: str, settings: Settings) -> Tenant:
    """The tenant whose live, operator-made namespace this is; else ``NotATenantNamespace``."""
    ns = await k8s.get("v1", "Namespace", namespace)
    meta: dict[str, Any] = (ns or {}).get("metadata") or {}
    org = (meta.get("labels") or {}).get(settings.operator.tenant_label)
    if ns is None or not org:
        raise NotATenantNamespace(f"namespace {namespace} is not a Mesial tenant namespace")
    try:
        expected = namespace_for(validate_org_name(org))
    except InputError:
        expected = ""
    organization = await k8s.get(*ORG, org) if expected == namespace else None
    live = organization is not None and not organization["metadata"].get("deletionTimestamp")
    uid = str((organization or {}).get("metadata", {}).get("uid") or "")
    if not live or meta.get("deletionTimestamp") or not owned_by(ns, uid):
        raise NotATenantNamespace(
            f"namespace {namespace} is not the live tenant namespace the operator created for an Organization"
        )
    assert organization is not None
    return Tenant(str(org), organization, namespace)
