"""ResourceQuota and LimitRange of the tenant namespace, from the Organization's tier."""

from __future__ import annotations

from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView


def desired_quotas(org: OrgView, settings: OperatorSettings) -> list[Obj]:
    tier = org.tier_of(settings)
    meta = {"namespace": org.namespace, "labels": org.labels(settings)}
    return [
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "mesial-quota", **meta},
            "spec": {"hard": dict(tier.quota)},
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "mesial-limits", **meta},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": dict(tier.default_limits),
                        "defaultRequest": dict(tier.default_requests),
                    }
                ]
            },
        },
    ]


async def sync_quotas(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    return [await k8s.apply(obj) for obj in desired_quotas(org, settings)]
