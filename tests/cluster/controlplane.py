"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (built by `make cluster-tools` from tests/cluster/go.mod), and the test node agent.

Each process runs on free loopback ports with a data directory of its own, certificates made
by :mod:`tests.cluster.pki`, and the flags a production cluster has where they matter to
Mesial: Node and RBAC authorization, NodeRestriction, PodSecurity and
ValidatingAdmissionPolicy admission (on by default), ServiceAccount token issuing
(TokenRequest, TokenReview), and the controllers for namespaces, garbage collection, Jobs,
Deployments/ReplicaSets, ServiceAccounts and their tokens, quotas and TTL-after-finished.
No kubelet: :mod:`tests.cluster.nodeagent` registers a Node and runs the pods bound to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import yaml

from mesial.common.services import (
    LOOPBACK,
    ManagedService,
    ServiceInfo,
    _alive,
    _http_ok,
    stop_process_group,
)
from tests.cluster.pki import Pair, Pki

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".tools" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
NODE = "mesial-node"
CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    # Takes the not-ready taint off the Node once the node agent reports it Ready.
    "node-lifecycle-controller",
)


class ControlPlaneError(RuntimeError):
    """The control plane cannot be built or started; the message says what to do."""


def binaries(bin_dir: Path = BIN) -> dict[str, Path]:
    """The control plane's programs, or an error naming the missing ones and ``make cluster-tools``."""
    found = {name: bin_dir / name for name in BINARIES}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{', '.join(missing)} missing in {bin_dir}: run `make cluster-tools` (needs Go 1.25+)")
    return found


def write_kubeconfig(
    path: Path, server: str, ca: Path, *, user: str, pair: Pair | None = None, token: str = ""
) -> Path:
    """A kubeconfig for one user: a client certificate or a bearer token."""
    credentials: dict[str, str] = {}
    if pair is not None:
        credentials = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    if token:
        credentials = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mesial-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "mesial-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def free_service_ip() -> str:
    """An address of 127.0.0.0/8 whose port 443 is free: the `kubernetes` Service of this cluster."""
    import random
    import socket

    for _ in range(50):
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((ip, 443))
            except OSError:
                continue
        return ip
    raise ControlPlaneError("no free address in 127.0.0.0/8 with port 443 free (the node agent runs as root)")


# -- the processes ------------------------------------------------------------------------------


class _Process(ManagedService):
    """A control plane process: its binary, its own directory, stopped by SIGTERM."""

    stop_grace_s = 10.0

    def __init__(self, base_dir: Path, binary: Path, *, tied_to_parent: bool) -> None:
        super().__init__(base_dir, tied_to_parent=tied_to_parent)
        self.binary = binary

    def prepare(self) -> None:
        pass

    def info(self) -> ServiceInfo:
        return self.describe(url=self.url, env={}, credentials={})

    @property
    def url(self) -> str:
        return ""


class Etcd(_Process):
    name = "etcd"
    port_span = 2  # client, peer

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        peer = f"http://{LOOPBACK}:{self.port + 1}"
        return [
            str(self.binary),
            "--name=mesial-test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mesial-test={peer}",
            "--listen-metrics-urls=",
            # A test cluster's data is thrown away: no fsync on the shared disk.
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ]

    def is_ready(self) -> bool:
        return _http_ok(f"{self.url}/health")


class ApiServer(_Process):
    name = "kube-apiserver"
    deadline_s = 180.0

    def __init__(self, base_dir: Path, binary: Path, *, etcd: str, pki: dict[str, Pair], tied_to_parent: bool) -> None:
        super().__init__(base_dir, binary, tied_to_parent=tied_to_parent)
        self.etcd = etcd
        self.pki = pki

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def audit_log(self) -> Path:
        return self.data_dir / "audit.jsonl"

    def prepare(self) -> None:
        # Every request's metadata (user, verb, resource, response code): the e2e tests read
        # it to prove that no request of the operator was refused (403) by its ClusterRole.
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}],
        }
        (self.data_dir / "audit-policy.yaml").write_text(yaml.safe_dump(policy))

    def command(self) -> list[str]:
        p = self.pki
        return [
            str(self.binary),
            f"--etcd-servers={self.etcd}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.port}",
            # The `kubernetes` Service cannot point at a loopback address; nothing here needs it.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.data_dir}",
            f"--tls-cert-file={p['serving'].cert}",
            f"--tls-private-key-file={p['serving'].key}",
            f"--client-ca-file={p['ca'].cert}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={p['sa'].cert}",
            f"--service-account-signing-key-file={p['sa'].key}",
            f"--api-audiences={ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # On top of the default plugins (NamespaceLifecycle, LimitRanger, ServiceAccount,
            # PodSecurity, ResourceQuota, ValidatingAdmissionPolicy, ...).
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=false",
            "--profiling=false",
            "--event-ttl=1h",
            f"--audit-policy-file={self.data_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--v=0",
        ]

    def is_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki["ca"].cert))
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2, context=context) as response:
                return int(response.status) == 200
        except (OSError, ValueError, urllib.error.HTTPError):
            return False


class _Client(_Process):
    """A process that only talks to the API server (no port of its own: --secure-port=0)."""

    def __init__(self, base_dir: Path, binary: Path, *, kubeconfig: Path, tied_to_parent: bool) -> None:
        super().__init__(base_dir, binary, tied_to_parent=tied_to_parent)
        self.kubeconfig = kubeconfig
        self.started = 0.0

    def _spawn(self) -> None:
        self.started = time.monotonic()
        super()._spawn()

    def is_ready(self) -> bool:
        # No health endpoint without a serving port: alive for two seconds is "started"; the
        # cluster's readiness is then checked through the API (default ServiceAccount).
        return time.monotonic() - self.started > 2.0


class ControllerManager(_Client):
    name = "kube-controller-manager"

    def __init__(
        self, base_dir: Path, binary: Path, *, kubeconfig: Path, pki: dict[str, Pair], tied_to_parent: bool
    ) -> None:
        super().__init__(base_dir, binary, kubeconfig=kubeconfig, tied_to_parent=tied_to_parent)
        self.pki = pki

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--kubeconfig={self.kubeconfig}",
            "--secure-port=0",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            # Each controller acts under its own ServiceAccount (RBAC's system:controller:* roles).
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki['sa'].key}",
            f"--root-ca-file={self.pki['ca'].cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--concurrent-namespace-syncs=4",
            "--v=0",
        ]


class Scheduler(_Client):
    name = "kube-scheduler"

    def command(self) -> list[str]:
        return [str(self.binary), f"--kubeconfig={self.kubeconfig}", "--secure-port=0", "--leader-elect=false", "--v=0"]


class NodeAgent(_Client):
    name = "node-agent"

    def __init__(
        self, base_dir: Path, *, kubeconfig: Path, api_port: int, service_ip: str, tied_to_parent: bool
    ) -> None:
        super().__init__(base_dir, Path(sys.executable), kubeconfig=kubeconfig, tied_to_parent=tied_to_parent)
        self.api_port = api_port
        self.service_ip = service_ip

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-P",
            str(ROOT / "scripts" / "cluster.py"),
            "node-agent",
            f"--kubeconfig={self.kubeconfig}",
            f"--node={NODE}",
            f"--pods-dir={self.data_dir}",
            f"--api-port={self.api_port}",
            f"--service-ip={self.service_ip}",
            f"--service-ip={self.service_ip}",
        ]


# -- the whole -----------------------------------------------------------------------------------


@dataclass
class ClusterInfo:
    """What a client of a running control plane needs, and what ``down`` needs to stop it."""

    server: str
    api_port: int
    ca: str
    kubeconfig: str
    node_kubeconfig: str
    base_dir: str
    pods_dir: str
    audit_log: str
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ClusterInfo:
        return cls(**json.loads(path.read_text()))


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node agent under ``base_dir``."""

    def __init__(self, base_dir: Path, *, bin_dir: Path = BIN, tied_to_parent: bool = True) -> None:
        self.base = base_dir
        self.bins = binaries(bin_dir)
        self.tied = tied_to_parent
        self.running: list[ManagedService] = []
        self.info: ClusterInfo | None = None

    def start(self, *, node_agent: bool = True) -> ClusterInfo:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            return self._start(node_agent)
        except BaseException:
            self.stop()
            raise

    def _start(self, node_agent: bool) -> ClusterInfo:
        pki = Pki(self.base / "pki")
        service_ip = free_service_ip()
        pairs = {
            "ca": pki.ca,
            "sa": pki.service_account_keys(),
            "serving": pki.issue(
                "apiserver",
                "kube-apiserver",
                dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", ISSUER[8:]),
                ips=(LOOPBACK, service_ip, "10.96.0.1"),
                server=True,
            ),
        }
        etcd = Etcd(self.base, self.bins["etcd"], tied_to_parent=self.tied)
        self._run(etcd)
        api = ApiServer(self.base, self.bins["kube-apiserver"], etcd=etcd.url, pki=pairs, tied_to_parent=self.tied)
        self._run(api)
        ca = pki.ca.cert

        def kubeconfig(user: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
            return write_kubeconfig(
                self.base / f"{user}.kubeconfig", api.url, ca, user=user, pair=pki.issue(user, cn, orgs=orgs)
            )

        admin = kubeconfig("admin", "mesial-test-admin", ("system:masters",))
        kcm = kubeconfig("controller-manager", "system:kube-controller-manager")
        sched = kubeconfig("scheduler", "system:kube-scheduler")
        node = kubeconfig("node", f"system:node:{NODE}", ("system:nodes",))
        self._run(
            ControllerManager(
                self.base, self.bins["kube-controller-manager"], kubeconfig=kcm, pki=pairs, tied_to_parent=self.tied
            )
        )
        self._run(Scheduler(self.base, self.bins["kube-scheduler"], kubeconfig=sched, tied_to_parent=self.tied))
        pods_dir = self.base / "node-agent"
        if node_agent:
            self._run(
                NodeAgent(
                    self.base, kubeconfig=node, api_port=api.port, service_ip=service_ip, tied_to_parent=self.tied
                )
            )
        self.info = ClusterInfo(
            server=api.url,
            api_port=api.port,
            ca=str(ca),
            kubeconfig=str(admin),
            node_kubeconfig=str(node),
            base_dir=str(self.base),
            pods_dir=str(pods_dir),
            audit_log=str(api.audit_log),
            pids={s.name: s.process.pid for s in self.running if s.process is not None},
            logs={s.name: str(s.log_path) for s in self.running},
        )
        self._wait_usable(admin, node_agent)
        return self.info

    def _run(self, service: ManagedService) -> ManagedService:
        service.start()
        self.running.append(service)
        return service

    def _wait_usable(self, admin: Path, node_agent: bool, timeout: float = 120.0) -> None:
        """The controllers are working (the `default` ServiceAccount exists) and the Node is Ready."""
        deadline = time.monotonic() + timeout
        checks = [["get", "serviceaccount", "default", "-n", "default"]]
        if node_agent:
            checks.append(["wait", f"node/{NODE}", "--for=condition=Ready", "--timeout=5s"])
        for args in checks:
            while True:
                result = kubectl(admin, *args, check=False)
                if result.returncode == 0:
                    break
                for service in self.running:
                    if service.process is not None and service.process.poll() is not None:
                        raise ControlPlaneError(f"{service.name} exited; its log: {service.log_path}")
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"control plane not usable after {timeout:.0f} s: kubectl {' '.join(args)}: {result.stderr.strip()}"
                    )
                time.sleep(0.5)

    def stop(self) -> None:
        while self.running:
            self.running.pop().stop()


@contextmanager
def running_control_plane(
    prefix: str, *, node_agent: bool = True, keep_env: str | None = None
) -> Iterator[ClusterInfo]:
    """A started :class:`ControlPlane` in a new directory ``/var/tmp/<prefix>*`` (outside /tmp:
    pods bind a volume over /tmp), stopped on exit and its directory removed, unless ``keep_env``
    names an environment variable that is ``1`` on exit (then the logs stay).

    Missing binaries (:class:`ControlPlaneError` from the constructor) fail the test with
    ``pytest.fail`` (the new directory removed); an error while starting stops what had started and propagates.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        plane = ControlPlane(base)
    except ControlPlaneError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(str(exc))
    try:
        yield plane.start(node_agent=node_agent)
    finally:
        plane.stop()
        if keep_env is None or os.environ.get(keep_env) != "1":
            shutil.rmtree(base, ignore_errors=True)


def kubectl(
    kubeconfig: Path | str, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run kubectl (from .tools/bin) against a kubeconfig."""
    exe = BIN / "kubectl"
    result = subprocess.run(
        [str(exe if exe.exists() else shutil.which("kubectl") or "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def stop_recorded(state: Path) -> list[str]:
    """Stop what ``cluster up`` recorded in ``state`` (node agent first, etcd last)."""
    if not state.exists():
        return []
    info = ClusterInfo.load(state)
    stopped = []
    for name, pid in reversed(list(info.pids.items())):
        if _alive(pid):
            stop_process_group(pid, None, 10.0, signal.SIGTERM)
            stopped.append(name)
    state.unlink()
    return stopped
