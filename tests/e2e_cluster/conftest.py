"""The e2e stack: a real cluster (tests/e2e_cluster/backends.py: the control plane of tests/cluster
with its node agent, or kind where Docker runs), OpenBao with its Kubernetes auth against it,
SeaweedFS, and the chart installed by `helm install`, its operator Deployment run with the chart's
own ServiceAccount.

One stack per test session (starting it takes about a minute on the shared 2-core machine); tests
use Organizations of their own names so they do not meet.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from mesial.common import services as svc
from tests.cluster.controlplane import BIN, ControlPlaneError, kubectl
from tests.e2e_cluster.backends import E2ECluster, only_on_reason, running_cluster, selected_backend

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesial"
RELEASE = "mesial"
NAMESPACE = "mesial-system"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "only_on(backend, reason): a scenario that only makes sense on one e2e backend (local, kind)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenarios marked ``only_on`` another backend than ``MESIAL_E2E_CLUSTER``'s are skipped, with the reason."""
    try:
        backend = selected_backend()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    for item in items:
        reason = only_on_reason(item, backend)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Kube:
    """kubectl as the cluster admin (the platform engineer), and a few waits."""

    info: E2ECluster

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return kubectl(self.info.kubeconfig, *args, check=check, input=input)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, *args: str) -> Any | None:
        """``kubectl get ARGS -o json``, or None when the object does not exist."""
        result = self("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise ControlPlaneError(result.stderr)
        return json.loads(result.stdout)

    def apply(self, obj: dict[str, Any] | str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self("apply", "-f", "-", input=text, check=check)

    def create(self, obj: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("create", "-f", "-", input=yaml.safe_dump(obj), check=check)


def eventually(check: Callable[[], Any], timeout: float = 90.0, interval: float = 0.5, what: str = "") -> Any:
    """``check()`` until it returns something truthy; its last error or value in the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, ControlPlaneError, KeyError, TypeError) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what or check}: last: {last!r}"[:4000])
        time.sleep(interval)


@pytest.fixture(scope="session")
def cluster() -> Iterator[E2ECluster]:
    """The cluster of the selected backend (``MESIAL_E2E_CLUSTER``: local or kind)."""
    for tool in ("kubectl", "helm"):
        if not (BIN / tool).exists():
            pytest.fail(f"{tool} is missing in {BIN}: run `make install`")
    # MESIAL_E2E_KEEP=1 keeps the logs (control plane, node agent, every pod's output) or the kind cluster.
    with running_cluster("mesial-e2e-") as info:
        yield info


@pytest.fixture(scope="session")
def kube(cluster: E2ECluster) -> Kube:
    return Kube(cluster)


@dataclass
class VaultSetup:
    url: str
    root_token: str
    client: hvac.Client
    kubernetes_accessor: str = ""


@pytest.fixture(scope="session")
def vault(openbao: svc.ServiceInfo, kube: Kube, cluster: E2ECluster) -> VaultSetup:
    """OpenBao as the platform team prepares it (chart README, "Before installing"): transit, and the
    Kubernetes auth method verifying ServiceAccount tokens through this API server's TokenReview."""
    root = openbao.credentials["root_token"]
    client = hvac.Client(url=openbao.url, token=root)
    mounts = client.sys.list_mounted_secrets_engines()
    if "transit/" not in mounts.get("data", mounts):
        client.sys.enable_secrets_engine("transit", path="transit")
    client.sys.enable_auth_method("kubernetes", path="kubernetes")
    # The reviewer: a ServiceAccount allowed to create TokenReviews (system:auth-delegator).
    kube("create", "serviceaccount", "vault-auth", "-n", "kube-system")
    kube(
        "create",
        "clusterrolebinding",
        "vault-auth-delegator",
        "--clusterrole=system:auth-delegator",
        "--serviceaccount=kube-system:vault-auth",
    )
    reviewer = kube("create", "token", "vault-auth", "-n", "kube-system", "--duration=24h").stdout.strip()
    client.write(
        "auth/kubernetes/config",
        kubernetes_host=cluster.server,
        kubernetes_ca_cert=Path(cluster.ca).read_text(),
        token_reviewer_jwt=reviewer,
        disable_local_ca_jwt=True,
    )
    accessor = client.sys.list_auth_methods()["data"]["kubernetes/"]["accessor"]
    return VaultSetup(openbao.url, root, client, accessor)


def _bind_role(vault: VaultSetup, name: str, policy: str, service_account: str) -> None:
    vault.client.sys.create_or_update_policy(name, policy)
    vault.client.write(
        f"auth/kubernetes/role/{name}",
        bound_service_account_names=[service_account],
        bound_service_account_namespaces=[NAMESPACE],
        audience="vault",
        token_policies=[name],
        token_ttl="1h",
    )


@dataclass
class Release:
    name: str
    namespace: str
    values: dict[str, Any]
    operator_sa: str
    values_file: Path
    # The ClusterRoles and ClusterRoleBindings that grant the operator's ServiceAccount its rights
    # (from the rendered chart): while one of them is deleted the operator has none.
    operator_grants: frozenset[str] = frozenset()


def helm(cluster: E2ECluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise ControlPlaneError(f"helm {' '.join(args)}: {result.stderr.strip()}")
    return result


def free_port() -> int:
    """A free port below the ephemeral range (32768-60999): a port the kernel hands out may be taken by
    some client connection's local end by the time a restarted pod binds it again."""
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise ControlPlaneError("no free port in 20000-32000")


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def release_values(cluster: E2ECluster, vault: VaultSetup, seaweedfs: svc.ServiceInfo) -> dict[str, Any]:
    """The release's values: OpenBao and SeaweedFS of the test run as pods reach them, quick intervals,
    and what the backend needs (local: a free value for every port a pod listens on; kind: the
    loaded image)."""
    values: dict[str, Any] = {
        # MESIAL_E2E_LOG_LEVEL=DEBUG: the operator's log (in the kept pod logs) says more.
        "global": {"logLevel": os.environ.get("MESIAL_E2E_LOG_LEVEL", "INFO")},
        "vault": {
            "addr": cluster.reachable_url(vault.url),
            "kubernetesMountAccessor": vault.kubernetes_accessor,
            "auditSigningKey": "mesial-e2e-audit",
        },
        "store": {"endpointUrl": cluster.reachable_url(seaweedfs.url), "bucket": seaweedfs.credentials["bucket"]},
        "api": {"enabled": True, "replicas": 1},
        "operator": {"driftIntervalSeconds": 5, "retryDelaySeconds": 2, "scanJobSyncIntervalSeconds": 2},
    }
    egress = {name: cluster.tenant_egress(url) for name, url in (("vault", vault.url), ("store", seaweedfs.url))}
    if all(egress.values()):
        values["operator"]["tenantEgress"] = egress
    return merged(values, cluster.chart_values())


def e2e_database(postgres: svc.ServiceInfo, purpose: str = "release") -> str:
    """A database of the release's own on the test run's PostgreSQL (the API tests use `mesial`)."""
    import asyncpg  # type: ignore[import-untyped]

    name = f"mesial_e2e_{purpose}_{os.getpid()}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres.url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name}")
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def release(
    cluster: E2ECluster,
    kube: Kube,
    vault: VaultSetup,
    seaweedfs: svc.ServiceInfo,
    postgres: svc.ServiceInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """`helm install` of the chart; the operator Deployment's pod runs in the cluster."""
    kube("create", "namespace", NAMESPACE)
    kube(
        "create",
        "secret",
        "generic",
        "mesial-store",
        "-n",
        NAMESPACE,
        f"--from-literal=access-key={seaweedfs.credentials['access_key']}",
        f"--from-literal=secret-key={seaweedfs.credentials['secret_key']}",
    )
    kube(
        "create", "secret", "generic", "mesial-database", "-n", NAMESPACE, f"--from-literal=url={cluster.reachable_url(e2e_database(postgres))}"
    )  # fmt: skip
    kube("create", "secret", "generic", "mesial-api-links", "-n", NAMESPACE, "--from-literal=link-secret=" + "k" * 43)
    values = release_values(cluster, vault, seaweedfs)
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    manifest = helm(cluster, "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values_file)).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    accounts = [
        d["metadata"]["name"] for d in docs if d.get("kind") == "ServiceAccount" and "operator" in d["metadata"]["name"]
    ]
    assert len(accounts) == 1, accounts
    bindings = [
        d
        for d in docs
        if d.get("kind") == "ClusterRoleBinding"
        and any(x.get("kind") == "ServiceAccount" and x.get("name") == accounts[0] for x in d.get("subjects") or [])
    ]
    grants = frozenset(n for d in bindings for n in (d["metadata"]["name"], d["roleRef"]["name"]))
    assert grants, "no ClusterRoleBinding of the operator's ServiceAccount in the chart"
    # The policies as the chart renders them for these values (docs/install.md, "Vault policies").
    (policies,) = [
        d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-vault-policies")
    ]
    _bind_role(vault, "mesial-operator", policies["operator.hcl"], accounts[0])
    # The aligner Jobs' one policy (templated on their login's namespace); the operator writes none.
    vault.client.sys.create_or_update_acl_policy("mesial-aligner", policies["aligner.hcl"])
    _bind_role(vault, "mesial-api", policies["api.hcl"], f"{RELEASE}-api")
    helm(cluster, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values_file))
    rel = Release(RELEASE, NAMESPACE, values, accounts[0], values_file, grants)
    eventually(lambda: operator_pod(kube, running=True), timeout=120, what="the operator pod runs")
    eventually(lambda: api_pod(kube, running=True), timeout=120, what="the API pod runs")
    yield rel
    helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=120s", check=False)


def operator_pod(kube: Kube, *, running: bool = False) -> dict[str, Any] | None:
    pods = kube.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if running:
        live = [p for p in live if p.get("status", {}).get("phase") == "Running"]
    return live[0] if live else None


def api_pod(kube: Kube, *, running: bool = False) -> dict[str, Any] | None:
    pods = kube.json("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=api")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if running:
        live = [p for p in live if p.get("status", {}).get("phase") == "Running"]
    return live[0] if live else None


@dataclass(frozen=True)
class Refusal:
    """A request the API server refused with 403, from its audit log."""

    time: datetime.datetime
    verb: str
    uri: str
    namespace: str
    message: str
    binding_race: bool  # within BINDING_RACE_S of the operator binding itself in that namespace
    unbound: bool = False  # made while one of the user's cluster grants was deleted (see refused())

    def __str__(self) -> str:
        return f"{self.verb} {self.uri}: {self.message}"


BINDING_RACE_S = 5.0
CLUSTER_RBAC = ("clusterroles", "clusterrolebindings")
WRITES = ("create", "patch", "update")  # Helm creates by server-side apply: a patch answered 201


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _code(event: dict[str, Any]) -> int:
    return int(event.get("responseStatus", {}).get("code", 0))


def refused(events: list[dict[str, Any]], user: str, grants: Collection[str] = ()) -> list[Refusal]:
    """Requests of ``user`` refused with 403, from audit events (JSON objects, in log order).

    Two kinds are flagged, not hidden (the caller decides):
    - ``binding_race``: in a tenant namespace within BINDING_RACE_S after the user created its own
      RoleBinding there: the RBAC authorizer reads bindings from a cache (seen now and then before the
      operator waited for its new binding to take effect);
    - ``unbound``: received while a ClusterRole or ClusterRoleBinding named in ``grants`` was deleted
      (by anyone: from its successful delete until a write creates it again, 201). `helm uninstall`
      deletes the operator's Deployment and its ClusterRoleBinding at once, and the old pod, in its
      grace period, can still ask before it stops: a refusal the chart's RBAC is not to blame for.
    """
    mine = [e for e in events if e.get("user", {}).get("username") == user]
    bound: dict[str, datetime.datetime] = {}
    for e in mine:
        ref = e.get("objectRef", {})
        if e["verb"] == "create" and ref.get("resource") == "rolebindings" and _code(e) == 201:
            bound.setdefault(ref.get("namespace", ""), _time(e["stageTimestamp"]))
    # [start, end) of each time a grant was missing; end None while it still is.
    gaps: list[tuple[datetime.datetime, datetime.datetime | None]] = []
    missing: dict[str, datetime.datetime] = {}
    for e in events:
        ref = e.get("objectRef", {})
        name = ref.get("name", "")
        if ref.get("resource") not in CLUSTER_RBAC or name not in grants:
            continue
        if e["verb"] == "delete" and _code(e) in (200, 202):
            missing.setdefault(name, _time(e["stageTimestamp"]))
        elif e["verb"] in WRITES and _code(e) == 201 and name in missing:
            gaps.append((missing.pop(name), _time(e["stageTimestamp"])))
    gaps += [(start, None) for start in missing.values()]
    out = []
    for e in mine:
        if _code(e) != 403:
            continue
        namespace = e.get("objectRef", {}).get("namespace", "")
        when = _time(e["requestReceivedTimestamp"])
        t0 = bound.get(namespace)
        race = t0 is not None and 0 <= (when - t0).total_seconds() <= BINDING_RACE_S
        unbound = any(start <= when and (end is None or when < end) for start, end in gaps)
        message = e["responseStatus"].get("message", "")
        out.append(Refusal(when, e["verb"], e["requestURI"], namespace, message, race, unbound))
    return out


def refusals(cluster: E2ECluster, user: str, grants: Collection[str] = ()) -> list[Refusal]:
    """:func:`refused` on the cluster's audit log as it stands."""
    events = [json.loads(line) for line in Path(cluster.audit_log).read_text().splitlines()]
    return refused(events, user, grants)


@pytest.fixture
def operator_authorised(cluster: E2ECluster, release: Release) -> Iterator[None]:
    """Fails the test if the API server refused a request of the operator's ServiceAccount, the
    binding race above included: the operator waits until its new tenant binding is in effect
    (operator/sync/organization/access.py), so no request of it may be refused. Only a request made
    while the release's own cluster grant was deleted (uninstalled) is not counted."""
    yield
    user = f"system:serviceaccount:{release.namespace}:{release.operator_sa}"
    counted = [r for r in refusals(cluster, user, release.operator_grants) if not r.unbound]
    assert not counted, "the chart's RBAC refused the operator:\n" + "\n".join(
        f"{r}{' (right after it bound itself there)' if r.binding_race else ''}" for r in counted[:20]
    )
