"""The operator's own access to a tenant namespace: a RoleBinding to the chart's tenant ClusterRole.

The operator holds no cluster-wide rights on Secrets, Jobs, Pods, Roles, NetworkPolicies,
quotas or ServiceAccounts (its ClusterRole in ``charts/mesial``). Right after creating a
tenant namespace it binds itself there to ``operator.tenant_cluster_role`` (which it may do
only because its ClusterRole grants ``bind`` on that one ClusterRole); every later write in
the namespace goes through that binding. The chart's admission policy
(``policies/admission/operator-guard.yaml``) refuses such a binding, or any write by the
operator, in a namespace the operator does not own. Unset (local mode, development
clusters with a broad role), no binding is made.

kube-apiserver's RBAC authorizer reads bindings from an informer cache: right after the binding is
created, the next request in the namespace may still be refused (403). So after creating it the
operator asks the authorizer itself (a SelfSubjectAccessReview, which every authenticated user may
make and which is never refused with 403) until the binding is in effect, for at most
``operator.access_wait_s``; the review is about ``get serviceaccounts`` there, which only the tenant
role grants. An API that cannot answer (an emulator) ends the wait at once.
"""

from __future__ import annotations

import asyncio
import time

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
    except K8sError as exc:
        if not exc.conflict:
            raise
        return [await k8s.apply(desired)]
    await wait_until_bound(k8s, org.namespace, settings.access_wait_s)
    return [Applied(Change.created, "was missing", "RoleBinding", org.namespace, BINDING_NAME)]


async def wait_until_bound(k8s: K8s, namespace: str, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Whether the authorizer lets the operator act in ``namespace`` (its tenant binding in effect)
    within ``timeout_s``; False at once when the API cannot tell (no SelfSubjectAccessReview)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "serviceaccounts"}},
    }
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = await k8s.create(review)
        except K8sError:
            return False
        status = (answer or {}).get("status")
        if not isinstance(status, dict):
            return False  # an emulator that stores the review without judging it
        if status.get("allowed") is True:
            return True
        if time.monotonic() >= deadline:
            return False  # kopf's retry covers what is left, as before
        await asyncio.sleep(interval_s)
