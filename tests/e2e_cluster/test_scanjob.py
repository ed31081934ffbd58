"""A ScanJob on a real API server: the operator's Job is admitted under Pod Security "restricted",
its pod runs as `mesial job run` with the tenant's Vault role (a projected token,
audience `vault`, checked by OpenBao through this API server's TokenReview) and the tenant's store
identity, and the result lands encrypted in the store and in the ScanJob's status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mesial.aligner.samples import generate_case, write_case
from mesial.common.contract import artifact_key
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings, StoreSettings, VaultSettings
from mesial.common.vault import TenantKeys
from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import Kube, Release, VaultSetup, eventually
from tests.e2e_cluster.test_organization import ready
from tests.operator.helpers import organization

pytestmark = pytest.mark.usefixtures("operator_authorised")

ORG = "e2e-jobs"
NS = f"mesial-org-{ORG}"


def root_settings(vault: VaultSetup, seaweedfs: Any) -> Settings:
    return Settings(
        vault=VaultSettings(addr=vault.url, token=vault.root_token),
        store=StoreSettings(
            endpoint_url=seaweedfs.url,
            access_key=seaweedfs.credentials["access_key"],
            secret_key=seaweedfs.credentials["secret_key"],
            bucket=seaweedfs.credentials["bucket"],
        ),
    )


async def upload(settings: Settings, org: str, files: dict[str, Path], prefix: str) -> dict[str, str]:
    """The tenant's scans, encrypted under its key, where the API would have put them."""
    ids: dict[str, str] = {}
    async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:
        for role in ("upper", "lower", "bite"):
            ids[role] = f"{prefix}-{role}"
            await store.put(org, f"scans/{ids[role]}", files[role].read_bytes())
    return ids


def ready_organization_with_case(
    kube: Kube,
    vault: VaultSetup,
    seaweedfs: Any,
    tmp_path: Path,
    org: str,
    *,
    seed: int,
    vertices: int,
    prefix: str,
) -> tuple[Settings, dict[str, str]]:
    """Organization ``org`` applied and Ready, and a generated case (``seed``, ``vertices`` per arch)
    uploaded as its scans ``<prefix>-upper``, ``<prefix>-lower``, ``<prefix>-bite``: the root
    settings used and the scan ids by role."""
    kube.apply(organization(org))
    eventually(lambda: ready(kube, org), timeout=120, what=f"Organization {org} Ready")
    settings = root_settings(vault, seaweedfs)
    files = write_case(generate_case(seed, vertices=vertices), tmp_path)
    return settings, asyncio.run(upload(settings, org, files, prefix))


async def read(settings: Settings, key: str) -> bytes:
    async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:
        data: bytes = await store.read_bytes(ORG, key)
    return data


def scanjob(namespace: str, name: str, ids: dict[str, str], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ScanJob of the scans ``ids`` (by role), no retries; ``options`` only when given."""
    spec: dict[str, Any] = {"scans": {"upper": ids["upper"], "lower": ids["lower"], "bites": [ids["bite"]]}}
    if options is not None:
        spec["options"] = options
    spec |= {"timeouts": {"activeDeadlineSeconds": 900}, "retries": 0}
    return {
        "apiVersion": "mesial.dev/v1alpha1",
        "kind": "ScanJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def phase(kube: Kube, name: str) -> str | None:
    obj = kube.get("scanjob", name, "-n", NS)
    return ((obj or {}).get("status") or {}).get("phase")


def test_scanjob_runs_under_restricted_with_the_tenants_vault_role(
    kube: Kube, release: Release, vault: VaultSetup, seaweedfs: Any, cluster: E2ECluster, tmp_path: Path
) -> None:
    settings, ids = ready_organization_with_case(
        kube, vault, seaweedfs, tmp_path, ORG, seed=5, vertices=8_000, prefix="case1"
    )

    kube.apply(scanjob(NS, "case1", ids, {"contactThresholdMm": 0.1, "optimiseBite": True}))
    job = eventually(lambda: kube.get("job", "scanjob-case1", "-n", NS), timeout=60, what="the Job")
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "mesial-aligner"
    assert pod_spec["automountServiceAccountToken"] is False

    def finished() -> str | None:
        current = phase(kube, "case1")
        return current if current in ("Succeeded", "Failed") else None

    final = eventually(finished, timeout=600, interval=2, what="ScanJob case1 finished")
    pods = kube.json("get", "pods", "-n", NS, "-l", "job-name=scanjob-case1")["items"]
    logs = "\n".join(
        cluster.pod_log(p, "aligner") or cluster.pod_log(p, p["spec"]["containers"][0]["name"]) for p in pods
    )
    status = kube.json("get", "scanjob", "case1", "-n", NS)["status"]
    assert final == "Succeeded", f"{status}\n--- pod log:\n{logs[-4000:]}"
    assert status["result"] in ("ok", "not_confident"), status
    assert artifact_key("case1", "result.json") in status["artifacts"]
    # The pod really ran under the restricted profile's identity, and logged in to Vault as the tenant.
    assert pods and all(p["spec"]["securityContext"]["runAsNonRoot"] for p in pods)
    result = json.loads(asyncio.run(read(settings, artifact_key("case1", "result.json"))))
    assert result["status"] == status["result"]
    job = kube.json("get", "job", "scanjob-case1", "-n", NS)
    assert job["status"].get("succeeded") == 1
