"""The cluster the e2e scenarios run on: one interface, two backends.

``MESIAL_E2E_CLUSTER`` selects it: ``local`` (the default; `make e2e`) is the control plane built
from Go modules with the test node agent (tests/cluster/controlplane.py); ``kind`` (`make e2e-kind`)
is a kind cluster in Docker with the image `make image` built (tests/cluster/kind.py). The scenarios
only use :class:`E2ECluster`: the kubeconfig, the API server's address, CA and audit log, and how
pods reach the host's services, how a client reaches a Service, how a container's output, a file
of it and its process are reached. A scenario that only makes sense on one backend is marked
``@pytest.mark.only_on("local", reason=...)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import BIN, ClusterInfo, ControlPlaneError, kubectl, running_control_plane
from tests.cluster.kind import KindCluster, KindUnavailable, docker_problem, kind_binary, kubeconfig_ca
from tests.cluster.relay import Relay

BACKENDS = ("local", "kind")
ENV = "MESIAL_E2E_CLUSTER"
KEEP_ENV = "MESIAL_E2E_KEEP"


def selected_backend(environ: Mapping[str, str] = os.environ) -> str:
    """The backend ``MESIAL_E2E_CLUSTER`` names (``local`` when unset or empty); anything else is an error."""
    name = environ.get(ENV, "").strip() or "local"
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _with_host(url: str, host: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _default_port(parts: urllib.parse.SplitResult) -> int:
    if parts.port is not None:
        return parts.port
    return {"http": 80, "https": 443, "postgres": 5432, "postgresql": 5432}[parts.scheme]


class E2ECluster(ABC):
    """What a scenario needs of the cluster it runs on."""

    backend: str
    server: str  # the API server's address, from the host
    ca: str  # its CA certificate file
    kubeconfig: str  # cluster-admin
    audit_log: str  # the API server's audit log (JSON lines, metadata of every request)

    def reachable_url(self, url: str) -> str:
        """``url`` of a service of the host (loopback) as both pods and the host reach it."""
        return url

    def tenant_egress(self, url: str) -> dict[str, Any] | None:
        """A chart ``operator.tenantEgress`` entry letting tenant pods reach ``reachable_url(url)``,
        or None where NetworkPolicies are not enforced (the chart's default entry stays)."""
        return None

    def chart_values(self) -> dict[str, Any]:
        """Values this backend needs in every release of the chart."""
        return {}

    @abstractmethod
    def service_url(self, namespace: str, name: str, port: int) -> str:
        """``http://host:port`` of a Service for a client on the host (`kubectl port-forward`)."""

    @abstractmethod
    def pod_log(self, pod: dict[str, Any], container: str) -> str:
        """A container's output ("" when there is none yet)."""

    @abstractmethod
    def pod_file(self, pod: dict[str, Any], container: str, path: str) -> str | None:
        """The text of ``path`` in a running container (a volume's file), None when it does not exist."""

    @abstractmethod
    def kill_container(self, pod: dict[str, Any], container: str) -> None:
        """SIGKILL a container's main process, as a crash would (the kubelet restarts it)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the backend holds for the scenarios (forwards, relays)."""


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status["name"] == container:
            return dict(status)
    raise ControlPlaneError(f"pod {pod['metadata']['name']} has no status of container {container}")


class LocalCluster(E2ECluster):
    """The control plane on loopback and its node agent: pods share the host's network."""

    backend = "local"

    def __init__(self, info: ClusterInfo) -> None:
        self.info = info
        self.server, self.ca, self.kubeconfig, self.audit_log = info.server, info.ca, info.kubeconfig, info.audit_log

    def chart_values(self) -> dict[str, Any]:
        # Pods share the host's network (and other stacks may run beside this one): every port a pod
        # listens on is a free one; one API replica (its Service still answers on 8080).
        from tests.e2e_cluster.conftest import free_port

        return {
            "api": {"replicas": 1, "port": free_port()},
            "operator": {"healthPort": free_port(), "metrics": {"port": free_port()}},
        }

    def service_url(self, namespace: str, name: str, port: int) -> str:
        listing = json.loads((Path(self.info.pods_dir) / "services.json").read_text())
        address = str(listing[f"{namespace}/{name}"])
        return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"

    def _pod_dirs(self, pod: dict[str, Any]) -> list[Path]:
        meta = pod["metadata"]
        return list(Path(self.info.pods_dir).glob(f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"))

    def pod_log(self, pod: dict[str, Any], container: str) -> str:
        return "".join(
            (d / f"{container}.log").read_text(errors="replace")
            for d in self._pod_dirs(pod)
            if (d / f"{container}.log").exists()
        )

    def pod_file(self, pod: dict[str, Any], container: str, path: str) -> str | None:
        """Through the volume mounted at ``path``'s directory: the node agent keeps each volume in
        ``<pods-dir>/<pod>/volumes/<name>``."""
        (spec,) = [c for c in pod["spec"]["containers"] if c["name"] == container]
        mounts = sorted(spec.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]), reverse=True)
        for mount in mounts:
            root = str(mount["mountPath"]).rstrip("/") + "/"
            if path.startswith(root):
                for d in self._pod_dirs(pod):
                    file = d / "volumes" / str(mount["name"]) / path.removeprefix(root)
                    if file.exists():
                        return file.read_text(errors="replace")
                return None
        raise ControlPlaneError(f"{path} is on no volume of {container}: the node agent keeps only volumes")

    def close(self) -> None:
        """Nothing to release: the node agent's files and addresses stay until the plane stops."""

    def kill_container(self, pod: dict[str, Any], container: str) -> None:
        # The node agent's container ID is its process group's leader: host://<pid>.
        pid = int(_container_status(pod, container)["containerID"].removeprefix("host://"))
        os.killpg(pid, signal.SIGKILL)


class KindE2ECluster(E2ECluster):
    """A kind cluster: pods have their own network; host services are relayed to them."""

    backend = "kind"

    def __init__(self, kind: KindCluster) -> None:
        self.kind = kind
        self.kubeconfig = str(kind.kubeconfig)
        server, ca = kubeconfig_ca(kind.kubeconfig, kind.base / "ca.crt")
        self.server, self.ca, self.audit_log = server, str(ca), str(kind.audit_log)
        self._gateway: str | None = None
        self._relays: dict[tuple[str, int], Relay] = {}
        self._forwards: dict[tuple[str, str, int], tuple[subprocess.Popen[str], str]] = {}

    @property
    def gateway(self) -> str:
        if self._gateway is None:
            self._gateway = self.kind.gateway()
        return self._gateway

    def _relay(self, url: str) -> Relay:
        parts = urllib.parse.urlsplit(url)
        target = (parts.hostname or "127.0.0.1", _default_port(parts))
        if target not in self._relays:
            try:  # the same port on the gateway address when free: the URL reads as the original
                self._relays[target] = Relay(self.gateway, target, port=target[1])
            except OSError:
                self._relays[target] = Relay(self.gateway, target)
        return self._relays[target]

    def reachable_url(self, url: str) -> str:
        host, port = self._relay(url).address
        return _with_host(url, host, port)

    def tenant_egress(self, url: str) -> dict[str, Any] | None:
        host, port = self._relay(url).address
        # null: Helm drops the chart's default selectors, so the rule is the address alone.
        return {"cidrs": [f"{host}/32"], "ports": [port], "namespaceSelector": None, "podSelector": None}

    def chart_values(self) -> dict[str, Any]:
        return self.kind.chart_values()

    def service_url(self, namespace: str, name: str, port: int) -> str:
        key = (namespace, name, port)
        if key in self._forwards and self._forwards[key][0].poll() is None:
            return self._forwards[key][1]
        process = subprocess.Popen(
            [str(BIN / "kubectl"), f"--kubeconfig={self.kubeconfig}", "port-forward", "-n", namespace,
             f"svc/{name}", f":{port}", "--address=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:40123 -> 8080"
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            process.kill()
            raise ControlPlaneError(f"kubectl port-forward svc/{name}: {line.strip()}")
        url = f"http://127.0.0.1:{found.group(1)}"
        # kubectl prints a line per connection: read them, or the full pipe would stall it.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        self._forwards[key] = (process, url)
        return url

    def _kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, *args, check=check)

    def pod_log(self, pod: dict[str, Any], container: str) -> str:
        meta = pod["metadata"]
        return self._kubectl("logs", "-n", meta["namespace"], meta["name"], "-c", container, check=False).stdout

    def pod_file(self, pod: dict[str, Any], container: str, path: str) -> str | None:
        meta = pod["metadata"]
        result = self._kubectl("exec", "-n", meta["namespace"], meta["name"], "-c", container, "--", "cat", path, check=False)  # fmt: skip
        if result.returncode != 0:
            if "No such file" in result.stderr:
                return None
            raise ControlPlaneError(f"kubectl exec {meta['name']} -- cat {path}: {result.stderr.strip()}")
        return result.stdout

    def kill_container(self, pod: dict[str, Any], container: str) -> None:
        # From the node (the container's PID 1 ignores SIGKILL sent inside its own PID namespace).
        node = pod["spec"]["nodeName"]
        pid = self.kind.container_pid(node, _container_status(pod, container)["containerID"])
        self.kind.kill(node, pid)

    def close(self) -> None:
        for process, _ in self._forwards.values():
            process.kill()
            process.wait(timeout=10)
        self._forwards.clear()
        for relay in self._relays.values():
            relay.close()
        self._relays.clear()


def _kind_or_fail() -> str:
    problem = docker_problem()
    if problem:
        pytest.fail(f"{ENV}=kind: {problem} (`make e2e-kind` checks this before running the tests)")
    kind = kind_binary()
    if kind is None:
        pytest.fail(f"{ENV}=kind: kind is not installed (`make e2e-kind` installs it into {BIN})")
    return kind


def kind_cluster_name(prefix: str, base: Path) -> str:
    """A kind cluster name (lowercase letters, digits, '-') unique to ``base``."""
    return re.sub(r"[^a-z0-9-]", "x", f"{prefix.strip('-')}-{base.name[-8:]}".lower())


@contextmanager
def running_cluster(prefix: str, backend: str | None = None) -> Iterator[E2ECluster]:
    """A new cluster of the selected backend, its files in ``/var/tmp/<prefix>*`` (outside /tmp: the
    node agent's pods bind a volume over /tmp), removed on exit unless ``MESIAL_E2E_KEEP=1`` (then
    the logs, and the kind cluster, stay)."""
    backend = backend or selected_backend()
    if backend == "local":
        with running_control_plane(prefix, keep_env=KEEP_ENV) as info:
            local = LocalCluster(info)
            try:
                yield local
            finally:
                local.close()
        return
    binary = _kind_or_fail()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    kind = KindCluster(kind_cluster_name(prefix, base), base, kind=binary)
    keep = False
    try:
        try:
            kind.create()
        except KindUnavailable as exc:
            pytest.fail(str(exc))
        cluster = KindE2ECluster(kind)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        keep = os.environ.get(KEEP_ENV) == "1"
        if not keep:
            kind.delete()
            shutil.rmtree(base, ignore_errors=True)


def only_on_reason(item: pytest.Item, backend: str) -> str | None:
    """Why ``item`` is skipped on ``backend`` (its ``only_on`` marker names another), or None."""
    marker = item.get_closest_marker("only_on")
    if marker is None or marker.args[0] == backend:
        return None
    return f"only on the {marker.args[0]} backend: {marker.kwargs['reason']}"
