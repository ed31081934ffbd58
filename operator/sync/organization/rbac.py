"""The aligner ServiceAccount and its least-privilege Role and RoleBinding.

The aligner needs nothing from the Kubernetes API but to read its own ScanJob; its
Vault login uses a projected token (audience ``vault``), not an API credential, and its
progress goes to the object store. So the Role grants ``get`` on scanjobs, nothing more.
"""

from __future__ import annotations

from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, K8s, Obj
from mesial.operator.sync.organization.model import OrgView

ROLE_NAME = "mesial-aligner"


def desired_rbac(org: OrgView, settings: OperatorSettings) -> list[Obj]:
    labels = org.labels(settings)
    sa = settings.aligner_service_account
    meta = {"namespace": org.namespace, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": sa, **meta},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": ROLE_NAME, **meta},
            "rules": [{"apiGroups": ["mesial.dev"], "resources": ["scanjobs"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": ROLE_NAME, **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_NAME},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": org.namespace}],
        },
    ]


async def sync_rbac(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    return [await k8s.apply(obj) for obj in desired_rbac(org, settings)]
