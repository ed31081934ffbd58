"""Deleting an Organization while one of its ScanJobs runs, on the real API server.

What a platform engineer may expect: the deletion waits for the running job (it names it) until told
to force; forced, the job is stopped, and the tenant's key is shredded only once no pod of the tenant
can still use it; the store prefix ends empty (whatever the job wrote meanwhile), the receipt is
written, and nothing is left: no ScanJob, Job or pod, no namespace, no Vault key or role, no store
identity.

A sampler watches the world from outside while the deletion runs (the tenant's pods as the API server
shows them, the key as Vault shows it): at no moment may the key be gone while a pod of the tenant
still runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.store_identity import TenantStoreIdentities
from mesial.common.vault import TenantKeys
from tests.e2e_cluster.backends import E2ECluster
from tests.e2e_cluster.conftest import Kube, Release, VaultSetup, eventually
from tests.e2e_cluster.test_organization import receipts
from tests.e2e_cluster.test_scanjob import ready_organization_with_case, scanjob

pytestmark = pytest.mark.usefixtures("operator_authorised")

ORG = "e2e-del-run"
NS = f"mesial-org-{ORG}"
KEY = NS  # the tenant's transit key is named as its namespace


async def objects(settings: Settings) -> list[str]:
    async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:
        return [meta.key async for meta in store.list(ORG)]


def running_pods(kube: Kube) -> list[str]:
    """Pods of the tenant namespace not yet ended (a pod being deleted still runs until it is gone)."""
    pods = kube.json("get", "pods", "-n", NS)["items"] if kube.get("namespace", NS) else []
    return [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def key_exists(client: hvac.Client) -> bool:
    try:
        client.secrets.transit.read_key(KEY)
    except hvac.exceptions.InvalidPath:
        return False
    return True


@dataclass
class Sampler:
    """Samples (time, running pods, key in Vault) until stopped."""

    kube: Kube
    vault: hvac.Client
    samples: list[tuple[float, list[str], bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            pods = running_pods(self.kube)
            self.samples.append((time.time(), pods, key_exists(self.vault)))
            time.sleep(0.1)

    def violations(self) -> list[tuple[float, list[str], bool]]:
        """Samples with the key gone while a pod still ran, or a pod observed after the key was seen gone."""
        gone = [t for t, _, exists in self.samples if not exists]
        first_gone = min(gone) if gone else float("inf")
        return [s for s in self.samples if s[1] and s[0] >= first_gone]


def test_deleting_an_organization_with_a_running_scanjob_waits_then_stops_it_before_shredding(
    kube: Kube, release: Release, vault: VaultSetup, seaweedfs: Any, cluster: E2ECluster, tmp_path: Path
) -> None:
    # Big arches, so the job runs long enough to be deleted mid-run (tens of seconds here).
    settings, ids = ready_organization_with_case(
        kube, vault, seaweedfs, tmp_path, ORG, seed=7, vertices=250_000, prefix="big"
    )
    kube.apply(scanjob(NS, "long", ids))

    def job_running() -> bool:
        status = (kube.get("scanjob", "long", "-n", NS) or {}).get("status") or {}
        return status.get("phase") == "Running" and bool(running_pods(kube))

    eventually(job_running, timeout=120, interval=0.5, what="ScanJob long Running, its pod running")

    # Not forced: the deletion waits for the running job, says which, and touches nothing yet.
    kube("delete", "organization", ORG, "--wait=false")

    def blocked() -> dict[str, Any] | None:
        status = (kube.get("organization", ORG) or {}).get("status") or {}
        deleting = [c for c in status.get("conditions") or [] if c["type"] == "Deleting"]
        return deleting[0] if deleting and deleting[0].get("reason") == "DeletionBlocked" else None

    condition = eventually(blocked, timeout=60, what="Deleting=False DeletionBlocked")
    assert condition["status"] == "False" and "long" in condition["message"], condition
    assert running_pods(kube), "the job was not running any more: the test proves nothing (make it longer)"
    assert key_exists(vault.client) and asyncio.run(objects(settings))  # nothing deleted while waiting

    # Forced: the job is stopped; the key goes only once no pod of the tenant runs.
    sampler = Sampler(kube, vault.client)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        kube("patch", "organization", ORG, "--type=merge", "-p", '{"spec":{"deletion":{"force":true}}}')
        eventually(lambda: kube.get("organization", ORG) is None, timeout=240, what=f"Organization {ORG} gone")
    finally:
        sampler.stop.set()
        thread.join(timeout=30)
    assert any(pods for _, pods, _ in sampler.samples), "no running pod was seen after forcing: proves nothing"
    assert any(not exists for _, _, exists in sampler.samples), "the key was never seen gone"
    bad = sampler.violations()
    assert not bad, f"the key was shredded while a pod of the tenant still ran: {bad[:3]}"

    # Nothing left behind.
    eventually(lambda: kube.get("namespace", NS) is None, timeout=120, what="namespace removed")
    assert not key_exists(vault.client)
    assert vault.client.read(f"auth/kubernetes/role/{NS}") is None
    assert asyncio.run(objects(settings)) == []  # whatever the job wrote before it stopped, too
    assert not TenantStoreIdentities(settings.store).exists(ORG)
    (receipt,) = [
        r for r in receipts(kube, cluster) if r.get("action") == "organization.deleted" and r["tenant"] == ORG
    ]
    details = receipt["details"]
    assert details["key_shredded"] is True and details["namespace_deleted"] is True, details
    assert details["store_identity_removed"] is True and details["key"] == KEY, details
