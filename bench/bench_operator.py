"""The operator at scale against the kmock emulator with a real OpenBao (and SeaweedFS).

    python bench/bench_operator.py [--orgs 500] [--scanjobs 200] [--quick]

1. N Organizations created at once: time until all are Ready; requests per Organization
   to the Kubernetes API (as served by the emulator, kopf's own included) and to Vault.
2. ScanJobs created one after another in a Ready tenant: time from creation to the Job
   existing (median, p99).

The services it needs are started here (``mesial.common.services.running``) and stopped
at the end. The emulator is in-process, so the Kubernetes side measures the operator's
own work, not a real API server's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import hardware, table

from mesial.common.audit_sinks import MemoryAuditSink
from mesial.common.services import running
from mesial.common.settings import OperatorSettings, Settings, StoreSettings, VaultSettings
from mesial.operator.k8s import K8s
from mesial.operator.runtime import Runtime
from mesial.operator.testing import emulated

ORG = ("mesial.dev/v1alpha1", "Organization")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def bench(settings: Settings, orgs: int, scanjobs: int) -> list[list[Any]]:
    vault_requests = 0

    async def factory(k8s: K8s) -> Runtime:
        runtime = await Runtime.create(settings, k8s, audit=MemoryAuditSink())

        def count(response: Any, *args: Any, **kwargs: Any) -> None:
            nonlocal vault_requests
            vault_requests += 1

        runtime.keys.client.adapter.session.hooks["response"].append(count)
        return runtime

    rows: list[list[Any]] = []
    async with emulated(settings, factory) as h:
        await asyncio.sleep(0.5)
        k8s, emulator = h.client, h.emulator
        names = [f"bench-{i:04d}" for i in range(orgs)]
        k8s_before, vault_before = emulator.request_count, vault_requests
        started = time.perf_counter()
        await asyncio.gather(*(k8s.create(_org(n)) for n in names))
        pending = set(names)
        polls = 0
        while pending:
            items = await k8s.list(*ORG)
            polls += 1
            pending -= {o["metadata"]["name"] for o in items if (o.get("status") or {}).get("phase") == "Ready"}
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        # this script's own creates and list polls are not the operator's
        k8s_per_org = (emulator.request_count - k8s_before - orgs - polls) / orgs
        rows.append([f"{orgs} Organizations at once: all Ready", f"{elapsed:.1f} s", f"{orgs / elapsed:.1f} orgs/s"])
        rows.append(["Kubernetes API requests per Organization", f"{k8s_per_org:.1f}", "kopf's included"])
        rows.append(["Vault requests per Organization", f"{(vault_requests - vault_before) / orgs:.1f}", ""])

        ns = "mesial-org-bench-0000"
        latencies = []
        for i in range(scanjobs):
            name = f"case-{i:04d}"
            body = {"apiVersion": "mesial.dev/v1alpha1", "kind": "ScanJob", "metadata": {"name": name, "namespace": ns},
                    "spec": {"scans": {"upper": f"u{i}", "lower": f"l{i}"}}}  # fmt: skip
            t0 = time.perf_counter()
            await k8s.create(body)
            while not _job_exists(emulator, ns, f"scanjob-{name}"):
                await asyncio.sleep(0.002)
            latencies.append((time.perf_counter() - t0) * 1000)
        rows.append([f"ScanJob → Job exists, median over {scanjobs}", f"{statistics.median(latencies):.0f} ms", ""])
        rows.append([f"ScanJob → Job exists, p99 over {scanjobs}", f"{percentile(latencies, 0.99):.0f} ms", ""])
    return rows


def _org(name: str) -> dict[str, Any]:
    return {"apiVersion": "mesial.dev/v1alpha1", "kind": "Organization", "metadata": {"name": name},
            "spec": {"displayName": name, "tier": "small"}}  # fmt: skip


def _job_exists(emulator: Any, ns: str, name: str) -> bool:
    """A dictionary lookup once the jobs resource is known: the bench polls every 2 ms in the
    operator's own event loop, and a scan of every stored object (Events included) at that rate
    slowed the operator it measures."""
    resource = _JOBS.get("resource")
    if resource is None:
        for (resource_, _, _), _ in list(emulator.objects.items()):
            if resource_.plural == "jobs":
                _JOBS["resource"] = resource = resource_
                break
        else:
            return False
    key = (resource, ns, name)
    return key in emulator._objects and not emulator._objects[key].deleted


_JOBS: dict[str, Any] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=500)
    parser.add_argument("--scanjobs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="50 Organizations, 50 ScanJobs")
    args = parser.parse_args()
    orgs, scanjobs = (50, 50) if args.quick else (args.orgs, args.scanjobs)
    with (
        tempfile.TemporaryDirectory(prefix="mesial-bench-") as tmp,
        running(Path(tmp), ["openbao", "seaweedfs"]) as infos,
    ):
        bao, weed = infos["openbao"], infos["seaweedfs"]
        settings = Settings(
            vault=VaultSettings(addr=bao.url, token=bao.credentials["root_token"], backoff_s=0.05),
            store=StoreSettings(
                endpoint_url=weed.url,
                access_key=weed.credentials["access_key"],
                secret_key=weed.credentials["secret_key"],
                bucket=weed.credentials["bucket"],
            ),
            operator=OperatorSettings(
                drift_interval_s=300, scanjob_sync_interval_s=60, retention_tick_s=300, liveness_endpoint=""
            ),
        )
        rows = asyncio.run(bench(settings, orgs, scanjobs))
    print(f"Operator benchmark — {hardware()}")
    print(table(["measure", "value", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
