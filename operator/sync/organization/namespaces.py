"""The tenant namespace: Pod Security ``restricted`` (enforce, audit, warn) and the tenant label."""

from __future__ import annotations

from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}


def desired_namespace(org: OrgView, settings: OperatorSettings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": org.namespace, "labels": {**org.labels(settings), **POD_SECURITY}},
    }


async def sync_namespace(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    return [await k8s.apply(desired_namespace(org, settings))]
