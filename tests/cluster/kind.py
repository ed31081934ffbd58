"""A kind cluster for the e2e scenarios where Docker runs (`make e2e-kind`, ``MESIAL_E2E_CLUSTER=kind``).

What it does, in order (each step a command built here, so the unit tests can show it without Docker):

1. checks that Docker's daemon answers (``docker info``) and that ``kind`` is on the PATH;
2. ``kind create cluster`` from :func:`kind_config`: one node of the pinned ``kindest/node`` image
   (the Kubernetes minor the chart is tested on), the API server writing an audit log (metadata of
   every request, as the local control plane's) to a directory of the host mounted into the node;
3. the image `make image` built (``.tools/image/mesial.oci.tar``) converted to a Docker archive
   named ``localhost/mesial:<version>`` (buildah; ``kind load image-archive`` imports an OCI
   archive without a usable name) and loaded into the node; the chart then runs it with
   ``pullPolicy: Never``;
4. on exit ``kind delete cluster``, unless asked to keep it.

Host services (the test run's OpenBao, SeaweedFS, PostgreSQL listen on loopback) are reached from
pods through :class:`tests.cluster.relay.Relay` on the host's address in kind's Docker network.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import BIN, ControlPlaneError

ROOT = Path(__file__).resolve().parents[2]
# Pinned together: kind v0.31.0's own default node image (Kubernetes 1.35, the minor of
# tests/cluster/go.mod). scripts/e2e-kind.sh installs this kind with `go install`.
KIND_VERSION = "v0.31.0"
NODE_IMAGE = "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
IMAGE_ARCHIVE = ROOT / ".tools" / "image" / "mesial.oci.tar"
IMAGE_REPOSITORY = "localhost/mesial"
NETWORK = "kind"  # the Docker network kind puts its nodes in
AUDIT_DIR_IN_NODE = "/var/log/kubernetes"
AUDIT_POLICY_IN_NODE = "/etc/kubernetes/policies/audit-policy.yaml"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class KindUnavailable(ControlPlaneError):
    """Docker or kind is missing: the kind backend cannot run on this machine."""


def image_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The version `make image` tags the image with (the project's version)."""
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def docker_problem(docker: str | None = None) -> str | None:
    """Why kind cannot run here (no ``docker`` program, or its daemon does not answer), or None."""
    docker = docker or shutil.which("docker")
    if docker is None:
        return "docker is not installed: kind runs its nodes as Docker containers"
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if result.returncode != 0 or not result.stdout.strip():
        last = (result.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"Docker's daemon does not answer (`docker info`: {last})"
    return None


def kind_binary() -> str | None:
    exe = BIN / "kind"
    return str(exe) if exe.exists() else shutil.which("kind")


def kind_config(audit_dir: Path, audit_policy: Path, node_image: str = NODE_IMAGE) -> dict[str, Any]:
    """kind's cluster config: one control-plane node whose API server keeps an audit log in
    ``audit_dir`` of the host (kind v0.31 writes kubeadm's v1beta3 config; the patch names it)."""
    patch = {
        "apiVersion": "kubeadm.k8s.io/v1beta3",
        "kind": "ClusterConfiguration",
        "apiServer": {
            "extraArgs": {
                "audit-policy-file": AUDIT_POLICY_IN_NODE,
                "audit-log-path": f"{AUDIT_DIR_IN_NODE}/audit.jsonl",
                "audit-log-format": "json",
                "audit-log-mode": "blocking",
            },
            "extraVolumes": [
                {
                    "name": "audit-policy",
                    "hostPath": AUDIT_POLICY_IN_NODE,
                    "mountPath": AUDIT_POLICY_IN_NODE,
                    "readOnly": True,
                    "pathType": "File",
                },
                {
                    "name": "audit-log",
                    "hostPath": AUDIT_DIR_IN_NODE,
                    "mountPath": AUDIT_DIR_IN_NODE,
                    "readOnly": False,
                    "pathType": "DirectoryOrCreate",
                },
            ],
        },
    }
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [
            {
                "role": "control-plane",
                "image": node_image,
                "kubeadmConfigPatches": [yaml.safe_dump(patch)],
                "extraMounts": [
                    {"hostPath": str(audit_policy), "containerPath": AUDIT_POLICY_IN_NODE, "readOnly": True},
                    {"hostPath": str(audit_dir), "containerPath": AUDIT_DIR_IN_NODE},
                ],
            }
        ],
    }


def kubeconfig_ca(kubeconfig: Path, ca_file: Path) -> tuple[str, Path]:
    """The API server's address and its CA (written to ``ca_file``) from kind's kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(cluster["server"]), ca_file


@dataclass
class KindCluster:
    """One kind cluster ``name`` with its files (config, kubeconfig, CA, audit log) under ``base``."""

    name: str
    base: Path
    kind: str = "kind"
    docker: str = "docker"
    archive: Path = IMAGE_ARCHIVE
    version: str = field(default_factory=image_version)

    @property
    def kubeconfig(self) -> Path:
        return self.base / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.base / "audit" / "audit.jsonl"

    @property
    def image(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.version}"

    @property
    def docker_archive(self) -> Path:
        return self.base / "mesial.docker.tar"

    def write_config(self) -> Path:
        (self.base / "audit").mkdir(parents=True, exist_ok=True)
        policy = self.base / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        path = self.base / "kind.yaml"
        path.write_text(yaml.safe_dump(kind_config(self.base / "audit", policy)))
        return path

    def create_command(self) -> list[str]:
        return [
            self.kind,
            "create",
            "cluster",
            f"--name={self.name}",
            f"--config={self.base / 'kind.yaml'}",
            f"--kubeconfig={self.kubeconfig}",
            "--wait=180s",
        ]

    def load_commands(self) -> list[list[str]]:
        """The image of `make image` into the node: as a Docker archive with its full name."""
        return [
            ["buildah", "pull", "--quiet", f"oci-archive:{self.archive}"],
            ["buildah", "push", "--quiet", self.image, f"docker-archive:{self.docker_archive}:{self.image}"],
            [self.kind, "load", "image-archive", str(self.docker_archive), f"--name={self.name}"],
        ]

    def delete_command(self) -> list[str]:
        return [self.kind, "delete", "cluster", f"--name={self.name}"]

    def gateway_command(self) -> list[str]:
        """The host's address in kind's network (where pods reach the host's relays)."""
        return [self.docker, "network", "inspect", NETWORK, "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"]

    def chart_values(self) -> dict[str, Any]:
        """The image loaded into the node, never pulled."""
        return {"global": {"image": {"repository": IMAGE_REPOSITORY, "tag": self.version, "pullPolicy": "Never"}}}

    # -- running it (needs Docker) ----------------------------------------------------------------

    def _run(self, argv: list[str], timeout: float = 600) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ControlPlaneError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout

    def create(self) -> None:
        problem = docker_problem(shutil.which(self.docker))
        if problem:
            raise KindUnavailable(problem)
        if not self.archive.exists():
            raise ControlPlaneError(f"{self.archive} is missing: run `make image` first")
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._run(self.create_command())
        for argv in self.load_commands():
            self._run(argv)
        if not self.audit_log.exists():
            raise ControlPlaneError(
                f"kind's API server writes no audit log to {self.audit_log}: the config patch did not apply"
            )

    def gateway(self) -> str:
        addresses = [a for a in self._run(self.gateway_command()).split() if "." in a]
        if not addresses:
            raise ControlPlaneError(f"no IPv4 gateway in Docker's `{NETWORK}` network")
        return addresses[0]

    def delete(self) -> None:
        subprocess.run(self.delete_command(), capture_output=True, text=True, timeout=300)

    def container_pid(self, node: str, container_id: str) -> int:
        """The host PID (in the node's PID namespace) of a container's main process."""
        out = self._run(
            [
                self.docker,
                "exec",
                node,
                "crictl",
                "inspect",
                "--output",
                "go-template",
                "--template",
                "{{.info.pid}}",
                container_id.split("://", 1)[-1],
            ]
        )
        return int(out.strip())

    def kill(self, node: str, pid: int) -> None:
        self._run([self.docker, "exec", node, "kill", "-KILL", str(pid)])
