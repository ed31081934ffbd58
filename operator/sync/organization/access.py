"""The operator's own access to a tenant namespace: a RoleBinding to the chart's tenant ClusterRole.

The operator holds no cluster-wide rights on Secrets, Jobs, Pods, Roles, NetworkPolicies,
quotas or ServiceAccounts (its ClusterRole in ``charts/mesial``). Right after creating a
tenant namespace it binds itself there to ``operator.tenant_cluster_role`` (which it may do
only because its ClusterRole grants ``bind`` on that one ClusterRole); every later write in
the namespace goes through that binding. The chart's admission policy
(``policies/admission/operator-guard.yaml``) refuses such a binding, or any write by the
operator, in a namespace the operator does not own. Unset (local mode, development
clusters with a broad role), no binding is made.
"""

from __future__ import annotations

from mesial.common.errors import ConfigurationError
from mesial.common.settings import OperatorSettings
from mesial.operator.k8s import Applied, Change, K8s, K8sError, Obj
from mesial.operator.sync.organization.model import OrgView

BINDING_NAME = "mesial-operator"


def desired_access(org: OrgView, settings: OperatorSettings) -> Obj | None:
    if not settings.tenant_cluster_role:
        return None
    namespace, _, name = settings.service_account.partition("/")
    if not namespace or not name:
        raise ConfigurationError("operator.service_account must be '<namespace>/<name>' with tenant_cluster_role")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": BINDING_NAME, "namespace": org.namespace, "labels": org.labels(settings)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": settings.tenant_cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


async def sync_access(k8s: K8s, org: OrgView, settings: OperatorSettings) -> list[Applied]:
    desired = desired_access(org, settings)
    if desired is None:
        return []
    # create first: before the binding exists the operator may not even read RoleBindings there
    try:
        await k8s.create(desired)
        return [Applied(Change.created, "was missing", "RoleBinding", org.namespace, BINDING_NAME)]
    except K8sError as exc:
        if not exc.conflict:
            raise
    return [await k8s.apply(desired)]
