"""Benchmark of the tenant API and the audit collector.

    python bench/bench_api.py [--db sqlite|postgres] [--clients 50] [--requests 3000] [--seconds 20]
                              [--appends 2000] [--verify-events 20000]

It starts what it needs itself (OpenBao and SeaweedFS, plus PostgreSQL with ``--db
postgres``) on free loopback ports, runs ``mesial api serve`` (uvicorn) in a process of
its own, and drives it from a load generator in another process: ``--clients``
concurrent HTTP/1.1 keep-alive connections, each authenticated with an API key, bounded
by ``--requests`` in total and ``--seconds``. Measured:

* job status reads (``GET /v1/jobs/{id}``) and authenticated listing (``GET /v1/scans``):
  requests per second, p50 and p99 latency at ``--clients`` concurrent clients;
* audit appends per second with chaining (the collector, in this process, on the same
  database kind): sequential, and 16 concurrent writers on one tenant;
* offline verification of an export (``verify_export``) in events per second.

The table ends with the hardware it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import hardware

from mesial.common import services as svc

ROOT = Path(__file__).resolve().parents[1]
MESIAL = str(Path(sys.executable).parent / "mesial")
# two triangles, 10 mm across (uploads are checked like the aligner's inputs: no degenerate-only,
# dental-size meshes)
STL = (
    b"bench".ljust(80, b" ")
    + (2).to_bytes(4, "little")
    + b"".join(
        struct.pack("<12fH", 0, 0, 1, *a, *b, *c, 0)
        for a, b, c in (((0, 0, 0), (10, 0, 0), (0, 10, 0)), ((10, 0, 0), (10, 10, 0), (0, 10, 0)))
    )
)


def _arches() -> dict[str, bytes]:
    """Upper and lower arch files of a small generated case (an arch upload is checked for an arch's shape)."""
    from mesial.aligner.samples import generate_case, write_case

    with tempfile.TemporaryDirectory() as scratch:
        paths = write_case(generate_case(0, vertices=5000), Path(scratch), arch_format="stl")
        return {kind: paths[kind].read_bytes() for kind in ("upper", "lower")}


# -- load generator (runs in its own process) ----------------------------------------------
async def _load(url: str, key: str, clients: int, total: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    remaining = total
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                start = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def _load_process(url: str, key: str, clients: int, total: int, seconds: float, out: Any) -> None:
    out.put(asyncio.run(_load(url, key, clients, total, seconds)))


def load(url: str, key: str, clients: int, total: int, seconds: float) -> dict[str, Any]:
    queue: Any = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=_load_process, args=(url, key, clients, total, seconds, queue)
    )
    process.start()
    result: dict[str, Any] = queue.get(timeout=seconds + 120)
    process.join(timeout=30)
    return result


# -- server-side latency (from the API's own /metrics histogram) -----------------------------
def server_histogram(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("mesial_http_request_seconds_bucket{") and 'method="GET"' in line:
            labels, value = line.rsplit(" ", 1)
            route = labels.split('route="', 1)[1].split('"', 1)[0]
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            found[(route, bound)] = float(value)
    return found


def server_quantiles(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], route: str) -> str:
    """Upper bounds of the server-side p50/p99 (histogram buckets) for the requests in between."""
    bounds = sorted({b for r, b in after if r == route and b != "+Inf"}, key=float)
    total = after.get((route, "+Inf"), 0) - before.get((route, "+Inf"), 0)
    if not total:
        return "n/a"
    out = []
    for q in (0.5, 0.99):
        bound = next((b for b in bounds if after[(route, b)] - before.get((route, b), 0) >= q * total), "+Inf")
        out.append(f"≤{float(bound) * 1000:.0f}" if bound != "+Inf" else ">10000")
    return "/".join(out)


# -- helpers ---------------------------------------------------------------------------------
def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([MESIAL, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mesial {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


async def audit_rates(env: dict[str, str], appends: int, verify_events: int) -> dict[str, float]:
    from mesial.api.app import _current, open_database
    from mesial.api.audit.collector import AuditCollector
    from mesial.api.migrations import dialect_of
    from mesial.common.audit import AuditEvent, verify_export
    from mesial.common.settings import Settings
    from mesial.common.vault import TenantKeys

    os.environ.update(env)
    settings = Settings()
    context = await open_database(settings, migrate=True)
    results: dict[str, float] = {}
    with _current(context):
        collector = AuditCollector(TenantKeys(settings.vault), dialect_of(context.db()))
        start = time.perf_counter()
        for i in range(appends):
            await collector.append(AuditEvent("bench-seq", "key:bench", "bench.append", "scan", f"scn_{i}"))
        results["appends_seq"] = appends / (time.perf_counter() - start)

        async def writer(n: int, w: int) -> None:
            for i in range(n):
                await collector.append(AuditEvent("bench-conc", "key:bench", "bench.append", "scan", f"scn_{w}_{i}"))

        start = time.perf_counter()
        await asyncio.gather(*(writer(appends // 16, w) for w in range(16)))
        results["appends_conc"] = (appends // 16 * 16) / (time.perf_counter() - start)

        # An export to verify: build a chain of verify_events events.
        for i in range(verify_events):
            await collector.append(AuditEvent("bench-verify", "key:bench", "bench.append", "scan", f"scn_{i}"))
        lines = [line async for line in collector.export("bench-verify", None, None)]
    await context.close_connections()
    start = time.perf_counter()
    report = verify_export(lines)
    elapsed = time.perf_counter() - start
    assert report.ok, str(report)
    results["verify_events"] = report.events
    results["verify_rate"] = report.events / elapsed
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000, help="per measured route (bound)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured route (bound)")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--verify-events", type=int, default=20000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mesial-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # the postgres system user must traverse it
        names = ["openbao", "seaweedfs"] + (["postgres"] if args.db == "postgres" else [])
        with svc.running(base / "services", names) as infos:
            env = {**os.environ, "HOME": tmp, "MESIAL_DATA_DIR": str(base / "data")}
            for info in infos.values():
                env.update(info.env)
            bao, s3 = infos["openbao"], infos["seaweedfs"]
            env.update(
                {
                    "MESIAL_VAULT__ADDR": bao.url,
                    "MESIAL_VAULT__TOKEN": bao.credentials["root_token"],
                    "MESIAL_STORE__ENDPOINT_URL": s3.url,
                    "MESIAL_STORE__ACCESS_KEY": s3.credentials["access_key"],
                    "MESIAL_STORE__SECRET_KEY": s3.credentials["secret_key"],
                    "MESIAL_STORE__BUCKET": s3.credentials["bucket"],
                    "MESIAL_API__RATE_PER_KEY_PER_MIN": "10000000",
                    "MESIAL_API__RATE_PER_IP_PER_MIN": "10000000",
                    "MESIAL_API__CHECKPOINT_INTERVAL_S": "0",
                    "MESIAL_API__JOB_COMMAND": json.dumps([sys.executable, str(ROOT / "tests/api/jobscript.py")]),
                    "MESIAL_LOG_LEVEL": "WARNING",
                }
            )
            if args.db == "postgres":
                env["MESIAL_DATABASE_URL"] = infos["postgres"].url
            else:
                env["MESIAL_DATABASE_URL"] = f"sqlite://{base / 'bench.sqlite3'}"
            run(env, "admin", "create-org", "bench-lab")
            key = run(env, "admin", "issue-key", "--org", "bench-lab", "--role", "org-admin")
            port = svc.free_port()
            server = subprocess.Popen([MESIAL, "api", "serve", "--port", str(port)], env=env, cwd=tmp)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(150):
                    try:
                        if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.2)
                auth = {"authorization": f"Bearer {key}"}
                scans = {}
                arches = _arches()
                for kind in ("upper", "lower", "bite"):
                    body = arches.get(kind, STL)
                    r = httpx.post(f"{url}/v1/scans", params={"kind": kind}, content=body, headers=auth)
                    scans[kind] = r.json()["id"]
                for _ in range(47):  # a listing page of 50
                    httpx.post(f"{url}/v1/scans", params={"kind": "bite"}, content=STL, headers=auth)
                job = httpx.post(
                    f"{url}/v1/jobs",
                    json={"upper": scans["upper"], "lower": scans["lower"], "bites": [scans["bite"]]},
                    headers=auth,
                ).json()
                for _ in range(300):  # let the job finish: its process would compete for the CPU
                    if httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth).json()["state"] != "queued":
                        if httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth).json()["state"] != "running":
                            break
                    time.sleep(0.1)
                load(f"{url}/v1/jobs/{job['id']}", key, args.clients, 200, 5)  # warm-up, not reported
                before = server_histogram(url)
                status = load(f"{url}/v1/jobs/{job['id']}", key, args.clients, args.requests, args.seconds)
                middle = server_histogram(url)
                listing = load(f"{url}/v1/scans?limit=50", key, args.clients, args.requests, args.seconds)
                after = server_histogram(url)
                status["server"] = server_quantiles(before, middle, "/v1/jobs/{job_id}")
                listing["server"] = server_quantiles(middle, after, "/v1/scans")
            finally:
                server.terminate()
                server.wait(timeout=30)
            audit = asyncio.run(audit_rates(env, args.appends, args.verify_events))

    rows = [
        ("job status read (GET /v1/jobs/{id})", f"{status['rps']:.0f} req/s", f"{status['p50_ms']:.1f}", f"{status['p99_ms']:.1f}", status["server"], f"{status['requests']} ({status['errors']} errors)"),
        ("authenticated listing (GET /v1/scans, 50/page)", f"{listing['rps']:.0f} req/s", f"{listing['p50_ms']:.1f}", f"{listing['p99_ms']:.1f}", listing["server"], f"{listing['requests']} ({listing['errors']} errors)"),
        ("audit append, chained, sequential", f"{audit['appends_seq']:.0f} ev/s", "", "", "", f"{args.appends}"),
        ("audit append, chained, 16 writers one tenant", f"{audit['appends_conc']:.0f} ev/s", "", "", "", f"{args.appends // 16 * 16}"),
        ("offline verification (verify_export)", f"{audit['verify_rate']:.0f} ev/s", "", "", "", f"{int(audit['verify_events'])}"),
    ]  # fmt: skip
    print(f"\nMesial API benchmark — database {args.db}, {args.clients} concurrent clients, uvicorn (1 worker)\n")
    print("| measurement | rate | p50 ms | p99 ms | server p50/p99 ms | count |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nLatencies are measured by the client (load generator process); the server column gives")
    print("upper bounds from the API's own /metrics histogram (time inside the app, queueing excluded).")
    print(f"\nHardware: {hardware()}")
    if status["errors"] or listing["errors"]:
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
