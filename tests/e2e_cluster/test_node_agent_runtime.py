"""What the node agent does as a runtime beyond running one process: a container's background
children end with it, readiness probes gate the pod's Ready condition and its Service's endpoints,
and Services answer by name from inside pods."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_cluster.backends import LocalCluster
from tests.e2e_cluster.conftest import Kube, eventually, free_port
from tests.e2e_cluster.test_api import Client

pytestmark = pytest.mark.only_on("local", reason="tests the node agent itself (kind has a real kubelet)")


def pod(name: str, command: str, **extra: Any) -> dict[str, Any]:
    container = {"name": "c", "image": "not-pulled", "command": ["/bin/sh", "-c", command], **extra}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
            "containers": [container],
        },
    }


def phase(kube: Kube, name: str) -> str | None:
    return ((kube.get("pod", name, "-n", "default") or {}).get("status") or {}).get("phase")


def test_a_containers_background_children_end_with_it(kube: Kube, cluster: LocalCluster) -> None:
    kube.create(pod("agent-bg", "sleep 300 & echo child=$!; sleep 1"))
    done = eventually(lambda: phase(kube, "agent-bg") == "Succeeded", timeout=60, what="agent-bg done")
    assert done
    obj = kube.json("get", "pod", "agent-bg", "-n", "default")
    child = int(cluster.pod_log(obj, "c").rsplit("child=", 1)[1].split()[0])
    eventually(lambda: not Path(f"/proc/{child}").exists(), timeout=10, what=f"the background child {child} ended")


def test_readiness_probe_gates_ready_and_the_service(kube: Kube, cluster: LocalCluster) -> None:
    port = free_port()
    marker = f"/tmp/agent-ready-{os.getpid()}"
    # Ready only once the file exists; the server answers from the start.
    script = f"/usr/bin/python3 -m http.server {port} --bind 0.0.0.0 --directory / & sleep 300"
    probe = {"exec": {"command": ["test", "-e", marker]}, "periodSeconds": 1}
    spec = pod("agent-probe", script, readinessProbe=probe, ports=[{"name": "web", "containerPort": port}])
    spec["spec"]["containers"][0]["volumeMounts"] = []
    kube.create(spec)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "agent-probe", "namespace": "default"},
        "spec": {"selector": {"app": "agent-probe"}, "ports": [{"port": 80, "targetPort": "web"}]},
    }
    kube.create(service)
    eventually(lambda: phase(kube, "agent-probe") == "Running", timeout=60, what="agent-probe runs")
    client = Client(eventually(lambda: _url(cluster), timeout=30, what="the Service's address"))

    def ready() -> bool:
        conditions = kube.json("get", "pod", "agent-probe", "-n", "default")["status"]["conditions"]
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # The probe fails (no file): not Ready, and the Service has no endpoint.
    eventually(lambda: client.call("GET", "/")[0] == 0, timeout=10, what="no endpoint")
    assert not ready()
    Path(marker).write_text("")  # the pod's /tmp is the host's here (no emptyDir over it)
    try:
        eventually(ready, timeout=30, what="Ready once the probe passes")
        eventually(lambda: client.call("GET", "/")[0] == 200, timeout=30, what="the Service answers")
    finally:
        Path(marker).unlink()
        kube("delete", "pod", "agent-probe", "-n", "default", "--wait=false")
        kube("delete", "service", "agent-probe", "-n", "default")


def _url(cluster: LocalCluster) -> str | None:
    try:
        return cluster.service_url("default", "agent-probe", 80)
    except KeyError:
        return None
