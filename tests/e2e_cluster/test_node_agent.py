"""The test node agent on the real control plane: a Job's pod runs on the host as the pod's user,
with its Secret, projected token and read-only root; the Node authorizer limits what it can read."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.cluster.controlplane import kubectl
from tests.e2e_cluster.backends import LocalCluster
from tests.e2e_cluster.conftest import Kube, eventually

pytestmark = pytest.mark.only_on("local", reason="tests the node agent itself (kind has a real kubelet)")

SCRIPT = (
    'id -u; cat /var/run/secrets/x/token; echo; cat /s/k; echo; echo "env=$FOO"; '
    "touch /nope 2>/dev/null || echo root-read-only; touch /scratch/a && echo scratch-writable"
)


def job(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                    "containers": [
                        {
                            "name": "c",
                            "image": "not-pulled",
                            "command": command,
                            "env": [{"name": "FOO", "valueFrom": {"secretKeyRef": {"name": "agent-s1", "key": "k"}}}],
                            "securityContext": {"readOnlyRootFilesystem": True},
                            "volumeMounts": [
                                {"name": "t", "mountPath": "/var/run/secrets/x"},
                                {"name": "s", "mountPath": "/s"},
                                {"name": "scratch", "mountPath": "/scratch"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "t",
                            "projected": {
                                "sources": [
                                    {
                                        "serviceAccountToken": {
                                            "path": "token",
                                            "audience": "vault",
                                            "expirationSeconds": 600,
                                        }
                                    }
                                ]
                            },
                        },
                        {"name": "s", "secret": {"secretName": "agent-s1"}},
                        {"name": "scratch", "emptyDir": {}},
                    ],
                }
            },
        },
    }


def test_job_pod_runs_with_its_user_secret_token_and_read_only_root(kube: Kube, cluster: LocalCluster) -> None:
    kube("create", "secret", "generic", "agent-s1", "-n", "default", "--from-literal=k=secret-value")
    kube.create(job("agent-ok", ["sh", "-c", SCRIPT]))
    eventually(
        lambda: kube.json("get", "job", "agent-ok", "-n", "default")["status"].get("succeeded") == 1,
        timeout=60,
        what="Job agent-ok succeeded",
    )
    pod = kube.json("get", "pods", "-n", "default", "-l", "job-name=agent-ok")["items"][0]
    lines = cluster.pod_log(pod, "c").splitlines()[1:]
    assert lines[0] == "10001"
    payload = json.loads(base64.urlsafe_b64decode(lines[1].split(".")[1] + "=="))
    assert payload["aud"] == ["vault"] and payload["sub"] == "system:serviceaccount:default:default"
    assert payload["kubernetes.io"]["pod"]["uid"] == pod["metadata"]["uid"]  # bound to the pod
    assert lines[2:] == ["secret-value", "env=secret-value", "root-read-only", "scratch-writable"]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_failed_container_reports_its_exit_code(kube: Kube) -> None:
    kube.create(job("agent-fail", ["sh", "-c", "exit 3"]))
    eventually(
        lambda: kube.json("get", "job", "agent-fail", "-n", "default")["status"].get("failed") == 1,
        timeout=60,
        what="Job agent-fail failed",
    )
    pod = kube.json("get", "pods", "-n", "default", "-l", "job-name=agent-fail")["items"][0]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_node_authorizer_limits_the_node_to_its_pods_secrets(kube: Kube, cluster: LocalCluster) -> None:
    kube("create", "secret", "generic", "agent-unrelated", "-n", "default", "--from-literal=k=v")
    refused = kubectl(cluster.info.node_kubeconfig, "get", "secret", "agent-unrelated", "-n", "default", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
