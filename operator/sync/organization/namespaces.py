"""The tenant namespace: Pod Security ``restricted`` (enforce, audit, warn), the tenant label and
the owner mark (``mesial.dev/organization-uid``) that makes it the operator's.

A namespace of that name which the operator did not create for this Organization (no
mark, or another Organization's uid) is refused with ``NamespaceNotOwned``: never
labelled, never filled, never bound to Vault, never deleted (``sync.tenancy``).
"""

from __future__ import annotations

from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, Change, K8s, K8sError, Obj
from mesial.operator.sync.organization.model import OrgView
from mesial.operator.sync.tenancy import OWNER_ANNOTATION, NamespaceNotOwned, owned_by

POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}


def desired_namespace(org: OrgView, settings: OperatorSettings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": org.namespace,
            "labels": {**org.labels(settings), **POD_SECURITY},
            "annotations": {OWNER_ANNOTATION: org.uid},
        },
    }


async def sync_namespace(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    desired = desired_namespace(org, settings)
    actual = await k8s.get("v1", "Namespace", org.namespace)
    if actual is None:
        try:
            await k8s.create(desired)  # created, not applied: a namespace made meanwhile is not adopted
            return [Applied(Change.created, "was missing", "Namespace", None, org.namespace)]
        except K8sError as exc:
            if not exc.conflict:
                raise
            actual = await k8s.get("v1", "Namespace", org.namespace)
    if not owned_by(actual, org.uid):
        terminating = bool(((actual or {}).get("metadata") or {}).get("deletionTimestamp"))
        raise NamespaceNotOwned(
            f"namespace {org.namespace} exists and was not created by the operator for this Organization"
            + ("; it is terminating, retrying until it is gone" if terminating else "; it is left untouched")
        )
    return [await k8s.apply(desired)]
