"""The e2e backends without a cluster: the selection by ``MESIAL_E2E_CLUSTER``, the kind cluster's
config and commands, the values it gives the chart (rendered by `helm template`), the image archive
converted for `kind load` (buildah, as the kind path runs it), the relay pods reach host services
through, and the clear failure where Docker's daemon does not answer. Creating the kind cluster
itself needs Docker: `make e2e-kind` (docs/testing.md)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import controlplane
from tests.cluster.controlplane import BIN, ControlPlaneError
from tests.cluster.kind import (
    AUDIT_DIR_IN_NODE,
    AUDIT_POLICY_IN_NODE,
    NODE_IMAGE,
    KindCluster,
    KindUnavailable,
    docker_problem,
    image_version,
)
from tests.cluster.relay import Relay
from tests.e2e_cluster.backends import (
    KindE2ECluster,
    LocalCluster,
    _with_host,
    kind_cluster_name,
    only_on_reason,
    selected_backend,
)
from tests.e2e_cluster.conftest import CHART

ROOT = Path(__file__).resolve().parents[2]


def test_backend_selection() -> None:
    assert selected_backend({}) == "local"
    assert selected_backend({"MESIAL_E2E_CLUSTER": ""}) == "local"
    assert selected_backend({"MESIAL_E2E_CLUSTER": "kind"}) == "kind"
    assert selected_backend({"MESIAL_E2E_CLUSTER": " local "}) == "local"
    with pytest.raises(ValueError, match=r"MESIAL_E2E_CLUSTER='minikube': expected one of local, kind"):
        selected_backend({"MESIAL_E2E_CLUSTER": "minikube"})


def test_only_on_marks_skip_other_backends() -> None:
    class Item:
        def __init__(self, marker: Any) -> None:
            self.marker = marker

        def get_closest_marker(self, name: str) -> Any:
            return self.marker if name == "only_on" else None

    marked = Item(pytest.mark.only_on("local", reason="reads the node agent's files").mark)
    assert only_on_reason(marked, "local") is None  # type: ignore[arg-type]
    assert only_on_reason(marked, "kind") == "only on the local backend: reads the node agent's files"  # type: ignore[arg-type]
    assert only_on_reason(Item(None), "kind") is None  # type: ignore[arg-type]


def test_kind_cluster_names_are_valid() -> None:
    name = kind_cluster_name("mesial-e2e-", Path("/var/tmp/mesial-e2e-Ab_3xYz9"))
    assert name == "mesial-e2e-abx3xyz9"


def test_kind_config_has_the_pinned_node_and_the_audit_log(tmp_path: Path) -> None:
    kind = KindCluster("mesial-e2e-t", tmp_path, kind="/opt/kind", version="1.2.3")
    config = yaml.safe_load(kind.write_config().read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (node,) = config["nodes"]
    assert node["role"] == "control-plane" and node["image"] == NODE_IMAGE
    assert NODE_IMAGE.startswith("kindest/node:v1.35.") and "@sha256:" in NODE_IMAGE
    (patch,) = [yaml.safe_load(p) for p in node["kubeadmConfigPatches"]]
    assert patch["kind"] == "ClusterConfiguration" and patch["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    args = patch["apiServer"]["extraArgs"]
    assert args["audit-log-path"] == f"{AUDIT_DIR_IN_NODE}/audit.jsonl" and args["audit-policy-file"] == AUDIT_POLICY_IN_NODE  # fmt: skip
    mounts = {m["containerPath"]: m["hostPath"] for m in node["extraMounts"]}
    assert mounts[AUDIT_DIR_IN_NODE] == str(tmp_path / "audit") and kind.audit_log.parent == tmp_path / "audit"
    policy = yaml.safe_load(Path(mounts[AUDIT_POLICY_IN_NODE]).read_text())
    assert policy["rules"] == [{"level": "Metadata"}]


def test_kind_commands(tmp_path: Path) -> None:
    kind = KindCluster("mesial-e2e-t", tmp_path, kind="/opt/kind", version="1.2.3", archive=Path("/img/mesial.oci.tar"))
    assert kind.create_command() == [
        "/opt/kind", "create", "cluster", "--name=mesial-e2e-t", f"--config={tmp_path / 'kind.yaml'}",
        f"--kubeconfig={tmp_path / 'admin.kubeconfig'}", "--wait=180s",
    ]  # fmt: skip
    assert kind.load_commands() == [
        ["buildah", "pull", "--quiet", "oci-archive:/img/mesial.oci.tar"],
        [
            "buildah",
            "push",
            "--quiet",
            "localhost/mesial:1.2.3",
            f"docker-archive:{tmp_path / 'mesial.docker.tar'}:localhost/mesial:1.2.3",
        ],
        ["/opt/kind", "load", "image-archive", str(tmp_path / "mesial.docker.tar"), "--name=mesial-e2e-t"],
    ]
    assert kind.delete_command() == ["/opt/kind", "delete", "cluster", "--name=mesial-e2e-t"]
    assert image_version() == KindCluster("x", tmp_path).version  # make image's tag: the project's version


def test_the_kind_values_make_the_chart_run_the_loaded_image(tmp_path: Path) -> None:
    """`helm template` with the kind backend's values: every Mesial container (the operator, the API,
    the migration hook) and the aligner image the operator gives its Jobs is the loaded image, never
    pulled."""
    kind = KindCluster("mesial-e2e-t", tmp_path, version="1.2.3")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({**kind.chart_values(), "api": {"enabled": True}}))
    rendered = subprocess.run(
        [str(BIN / "helm"), "template", "mesial", str(CHART), "-n", "mesial-system", "-f", str(values)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    containers = [
        c
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert len(containers) >= 3
    for c in containers:
        assert (c["image"], c["imagePullPolicy"]) == ("localhost/mesial:1.2.3", "Never"), c["name"]
    env = {e["name"]: e.get("value") for c in containers for e in c.get("env", [])}
    assert env["MESIAL_OPERATOR__ALIGNER_IMAGE"] == "localhost/mesial:1.2.3"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("buildah") is None, reason="buildah as root (make image's tool)")
def test_the_image_archive_conversion_names_the_image(tmp_path: Path) -> None:
    """The first two load commands on a small OCI archive written as `make image` writes its own
    (`oci-archive:...:mesial:<version>`): the Docker archive kind loads names the image in full."""

    def buildah(*args: str) -> str:
        return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True).stdout.strip()

    version = f"0.0.{os.getpid()}"
    ctr = buildah("from", "scratch")
    (tmp_path / "f").write_text("x\n")
    buildah("copy", "--quiet", ctr, str(tmp_path / "f"), "/f")
    buildah("commit", "--quiet", ctr, f"localhost/mesial-probe:{version}")
    buildah("rm", ctr)
    archive = tmp_path / "mesial.oci.tar"
    buildah("push", "--quiet", f"localhost/mesial-probe:{version}", f"oci-archive:{archive}:mesial:{version}")
    buildah("rmi", f"localhost/mesial-probe:{version}")
    kind = KindCluster("t", tmp_path, version=version, archive=archive)
    try:
        for argv in kind.load_commands()[:2]:
            subprocess.run(argv, capture_output=True, text=True, check=True)
        with tarfile.open(kind.docker_archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == [f"localhost/mesial:{version}"]
    finally:
        subprocess.run(["buildah", "rmi", f"localhost/mesial:{version}"], capture_output=True)


def test_kind_without_dockers_daemon_fails_clearly(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    assert docker_problem(str(fake)) == (
        "Docker's daemon does not answer (`docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock.)"
    )
    assert docker_problem(str(tmp_path / "absent")) is not None
    kind = KindCluster("t", tmp_path, docker=str(fake))
    with pytest.raises(KindUnavailable, match="daemon does not answer"):
        kind.create()
    assert not kind.kubeconfig.exists()


def test_make_e2e_kind_says_why_and_fails_without_docker(tmp_path: Path) -> None:
    """scripts/e2e-kind.sh stops before building anything, exit code 2, naming what is missing."""
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "e2e-kind.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Docker's daemon does not answer" in result.stderr and "make e2e" in result.stderr, result.stderr


def test_urls_of_host_services_for_pods() -> None:
    assert _with_host("http://127.0.0.1:8200", "172.18.0.1", 8200) == "http://172.18.0.1:8200"
    assert _with_host("postgresql://u:p@127.0.0.1:5432/db?x=1", "172.18.0.1", 40000) == (
        "postgresql://u:p@172.18.0.1:40000/db?x=1"
    )
    assert _with_host("http://127.0.0.1:9", "fd00::1", 9) == "http://[fd00::1]:9"


def test_relay_forwards_both_ways_and_closes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        target = server.getsockname()[:2]

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data.upper())

        threading.Thread(target=echo, daemon=True).start()
        relay = Relay("127.0.0.2", target)
        try:
            assert relay.address[0] == "127.0.0.2" and relay.address[1] != target[1]
            with socket.create_connection(relay.address, timeout=5) as client:
                client.sendall(b"hello")
                assert client.recv(1024) == b"HELLO"
        finally:
            relay.close()
        with pytest.raises(OSError):
            socket.create_connection(relay.address, timeout=2).close()


def test_kind_cluster_reaches_host_services_through_relays(tmp_path: Path) -> None:
    """The kind backend's URLs and egress rules for host services, with the gateway stood in by a
    loopback address (the relay really listens there and forwards)."""
    kubeconfig = tmp_path / "admin.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"clusters": [{"cluster": {"server": "https://127.0.0.1:6443", "certificate-authority-data": "Q0E="}}]}))  # fmt: skip
    cluster = KindE2ECluster(KindCluster("t", tmp_path))
    cluster._gateway = "127.0.0.3"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        try:
            assert (cluster.server, Path(cluster.ca).read_text()) == ("https://127.0.0.1:6443", "CA")
            url = cluster.reachable_url(f"postgresql://u:p@127.0.0.1:{port}/db")
            assert url == f"postgresql://u:p@127.0.0.3:{port}/db"  # the same port was free there
            egress = cluster.tenant_egress(f"http://127.0.0.1:{port}")
            assert egress == {
                "cidrs": ["127.0.0.3/32"],
                "ports": [port],
                "namespaceSelector": None,
                "podSelector": None,
            }
            # As the release renders it for the operator: the relay's address and port alone.
            values = tmp_path / "values.yaml"
            values.write_text(yaml.safe_dump({"operator": {"tenantEgress": {"vault": egress}}}))
            rendered = subprocess.run(
                [str(BIN / "helm"), "template", "mesial", str(CHART), "-f", str(values)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            (deployment,) = [
                d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]
            ]  # fmt: skip
            env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert json.loads(env["MESIAL_OPERATOR__EGRESS_VAULT"]) == {
                "cidrs": ["127.0.0.3/32"], "namespace_selector": {}, "pod_selector": {}, "ports": [port]
            }  # fmt: skip
            with socket.create_connection(("127.0.0.3", port), timeout=5):
                server.accept()[0].close()
        finally:
            cluster.close()
    assert cluster.chart_values()["global"]["image"]["pullPolicy"] == "Never"


def test_local_cluster_reads_a_containers_file_through_its_volume(tmp_path: Path) -> None:
    from tests.cluster.controlplane import ClusterInfo

    info = ClusterInfo("https://x", 1, "ca", "kc", "nkc", str(tmp_path), str(tmp_path), "audit")
    pod = {
        "metadata": {"namespace": "ns", "name": "p", "uid": "0123456789"},
        "spec": {"containers": [{"name": "c", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}]},
    }
    volume = tmp_path / "ns_p_01234567" / "volumes" / "tmp" / "a"
    volume.mkdir(parents=True)
    (volume / "f.jsonl").write_text("{}\n")
    local = LocalCluster(info)
    assert local.pod_file(pod, "c", "/tmp/a/f.jsonl") == "{}\n"
    assert local.pod_file(pod, "c", "/tmp/a/none") is None
    with pytest.raises(ControlPlaneError, match="on no volume"):
        local.pod_file(pod, "c", "/etc/passwd")


def test_a_control_plane_that_cannot_be_built_leaves_no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"mesial-leak-{os.getpid()}-"

    def missing(bin_dir: Path = BIN) -> dict[str, Path]:
        raise ControlPlaneError("etcd missing: run `make cluster-tools`")

    monkeypatch.setattr(controlplane, "binaries", missing)
    with pytest.raises(pytest.fail.Exception, match="make cluster-tools"):
        with controlplane.running_control_plane(prefix):
            pass
    assert not list(Path("/var/tmp").glob(prefix + "*"))


def _pytest(env_value: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESIAL_E2E_CLUSTER": env_value}
    return subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_scenarios_of_the_other_backend_are_skipped_with_their_reason() -> None:
    result = _pytest("kind", "tests/e2e_cluster/test_node_agent.py", "tests/e2e_cluster/test_trial.py")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 skipped" in result.stdout, result.stdout[-3000:]
    assert "only on the local backend: tests the node agent itself (kind has a real kubelet)" in result.stdout
    assert "only on the local backend: the node agent maps the trial's images" in result.stdout


def test_an_unknown_backend_stops_pytest_naming_the_choices() -> None:
    result = _pytest("minikube", "tests/e2e_cluster/test_node_agent.py")
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    assert "MESIAL_E2E_CLUSTER='minikube': expected one of local, kind" in result.stderr


def test_kind_kills_a_container_from_its_node(tmp_path: Path) -> None:
    """The crash the operator scenarios cause, as the kind backend runs it (a stand-in `docker` records
    the commands; the container's PID 1 ignores SIGKILL from inside its own PID namespace)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$*" in *crictl*) echo 4242;; esac\n')
    fake.chmod(0o755)
    kubeconfig = tmp_path / "admin.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"clusters": [{"cluster": {"server": "https://127.0.0.1:1", "certificate-authority-data": "Q0E="}}]}))  # fmt: skip
    cluster = KindE2ECluster(KindCluster("t", tmp_path, docker=str(fake)))
    pod = {
        "metadata": {"name": "op", "namespace": "mesial-system"},
        "spec": {"nodeName": "mesial-e2e-x-control-plane"},
        "status": {"containerStatuses": [{"name": "operator", "containerID": "containerd://abc123"}]},
    }
    cluster.kill_container(pod, "operator")
    assert calls.read_text().splitlines() == [
        "exec mesial-e2e-x-control-plane crictl inspect --output go-template --template {{.info.pid}} abc123",
        "exec mesial-e2e-x-control-plane kill -KILL 4242",
    ]
