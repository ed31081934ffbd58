"""`make demo`: Mesial's main job end to end on embedded defaults, printed step by step.

No cluster: OpenBao (the Vault API) and SeaweedFS (S3) run locally on free ports in a
scratch directory and are stopped at the end. A synthetic case is uploaded encrypted,
aligned by the same Job entrypoint a Kubernetes Job runs (`mesial job run`), and its
results are fetched back, decrypted, into ./demo-out. What is not built yet is said so.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from mesial.aligner.job import JobSpec, run_job, status_key
from mesial.aligner.samples import generate_case, write_case
from mesial.common.errors import KeyNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.services import ServiceStack
from mesial.common.settings import Settings, StoreSettings, VaultSettings
from mesial.common.vault import TenantKeys

ORG = "demo-lab"
OUT = Path("demo-out")
console = Console(highlight=False, width=120)
T = TypeVar("T")
_step = 0


def step(title: str, action: Callable[[], T]) -> T:
    global _step
    _step += 1
    started = time.perf_counter()
    with console.status(f"[{_step}] {title}…"):
        result = action()
    console.print(f"[green]✓[/green] [{_step}] {title} [dim]({time.perf_counter() - started:.1f} s)[/dim]")
    return result


async def upload_case(settings: Settings, keys: TenantKeys, files: dict[str, Path]) -> dict[str, str]:
    table = Table(title="Encrypted uploads (tenants/demo-lab/scans/…)", title_justify="left")
    for column in ("scan", "bytes", "sha256", "key version", "parts"):
        table.add_column(column)
    ids: dict[str, str] = {}
    async with ObjectStore(settings.store, keys) as store:
        for role in ("upper", "lower", "bite", "bite2"):
            if role not in files:
                continue
            ids[role] = f"scan-{role}"
            stored = await store.put(ORG, f"scans/{ids[role]}", files[role].read_bytes())
            table.add_row(
                ids[role], f"{stored.size:,}", stored.sha256[:16] + "…", str(stored.key_version), str(stored.parts)
            )
        raw = await store.client.get_object(Bucket=store.bucket, Key=f"tenants/{ORG}/scans/scan-upper")
        at_rest = await raw["Body"].read()
    console.print(table)
    plain = files["upper"].read_bytes()
    console.print(f"    at rest: starts {at_rest[:4]!r} (envelope), plaintext absent: {plain[:64] not in at_rest}")
    return ids


async def fetch_results(settings: Settings, keys: TenantKeys, job_id: str) -> dict[str, Any]:
    OUT.mkdir(exist_ok=True)
    async with ObjectStore(settings.store, keys) as store:
        status: dict[str, Any] = json.loads(await store.read_bytes(ORG, status_key(job_id)))
        for key in status["artifacts"]:
            name = key.rsplit("/", 1)[-1]
            with (OUT / name).open("wb") as handle:
                async for piece in store.get(ORG, key):
                    handle.write(piece)
    return status


def lower_tre_mm(result: dict[str, Any], truth_path: Path, lower_file: Path) -> float | None:
    """RMS target registration error of the registered lower arch relative to the upper, over all its vertices.

    The bite optimisation then moves the lower on purpose (bite-through compensation), so
    the registration is compared before that correction.
    """
    if "transforms" not in result:
        return None
    import trimesh

    truth = json.loads(truth_path.read_text())
    vertices = np.asarray(trimesh.load(lower_file, process=False).vertices, dtype=np.float64)
    est_u, est_l = (np.asarray(result["transforms"][k]) for k in ("upper", "lower"))
    correction = result.get("occlusion", {}).get("correction", {}).get("matrix")
    if correction is not None:
        est_l = np.linalg.inv(np.asarray(correction)) @ est_l
    true_u, true_l = (np.asarray(truth["file_to_bite"][k]) for k in ("upper", "lower"))
    # The lower in the upper's frame, estimated vs true: independent of the bite frame.
    estimate = np.linalg.inv(est_u) @ est_l
    actual = np.linalg.inv(true_u) @ true_l
    homogeneous = np.c_[vertices, np.ones(len(vertices))]
    error = (homogeneous @ estimate.T)[:, :3] - (homogeneous @ actual.T)[:, :3]
    return float(np.sqrt((error**2).sum(axis=1).mean()))


def summary(status: dict[str, Any], tre: float | None) -> None:
    result = json.loads((OUT / "result.json").read_text())
    table = Table(title=f"Alignment: {result['status']}", title_justify="left")
    for column in ("arch", "contact area mm²", "patches", "max penetration mm"):
        table.add_column(column)
    for arch, values in result.get("occlusion", {}).get("after", {}).items():
        table.add_row(
            arch,
            f"{values.get('contact_area_mm2', 0):.2f}",
            str(values.get("patches", "")),
            f"{values.get('max_penetration_mm', 0):.3f}",
        )
    if table.row_count:
        console.print(table)
    else:
        console.print(f"    alignment: {result['status']}")
    if result["status"] != "ok":
        console.print(f"[yellow]    {status['message']}[/yellow]")
    if tre is not None:
        console.print(f"    registration: lower-arch TRE against the generator's ground truth {tre:.4f} mm RMS")
    correction = result.get("occlusion", {}).get("correction")
    if correction and result["occlusion"].get("optimised"):
        before = result["occlusion"]["before"]
        console.print(
            f"    bite optimisation moved the lower arch {correction['translation_mm']:.3f} mm / "
            f"{correction['rotation_deg']:.2f}°; max penetration before: "
            + ", ".join(f"{arch} {values['max_penetration_mm']:.3f} mm" for arch, values in before.items())
        )
    console.print(f"    outputs: {', '.join(sorted(str(p) for p in OUT.iterdir()))}")


async def lifecycle(settings: Settings, keys: TenantKeys, ids: dict[str, str]) -> None:
    async with ObjectStore(settings.store, keys) as store:
        rotated = await asyncio.to_thread(keys.rotate, ORG)
        for scan_id in ids.values():
            await store.rewrap(ORG, f"scans/{scan_id}")
        console.print(
            f"    rotated org-{ORG} to v{rotated.latest_version}; rewrapped {len(ids)} scans without re-encrypting"
        )
        await store.set_legal_hold(ORG, f"scans/{ids['upper']}", True)
        report = await store.delete_prefix(ORG, "scans/")
        console.print(
            f"    legal hold on {ids['upper']}; deletion removed {report.deleted} scans, kept {report.held} held"
        )


def main() -> int:
    console.rule("Mesial demo — embedded defaults (local services, no cluster)")
    with tempfile.TemporaryDirectory(prefix="mesial-demo-") as tmp:
        scratch = Path(tmp)
        stack = ServiceStack(scratch / "services", ["openbao", "seaweedfs"])
        services = step("start OpenBao (Vault API) and SeaweedFS (S3) on free loopback ports", stack.start)
        try:
            bao, s3 = services["openbao"], services["seaweedfs"]
            settings = Settings(
                vault=VaultSettings(addr=bao.url, token=bao.credentials["root_token"]),
                store=StoreSettings(
                    endpoint_url=s3.url,
                    access_key=s3.credentials["access_key"],
                    secret_key=s3.credentials["secret_key"],
                    bucket=s3.credentials["bucket"],
                ),
            )
            keys = TenantKeys(settings.vault)
            info = step(f"create organization key org-{ORG} (aes256-gcm96, not exportable)", lambda: _ensure(keys))
            console.print(f"    key version {info.latest_version}, fingerprint {info.fingerprint}")
            files = step(
                "generate a synthetic case: two arches, two buccal bites, random poses",
                lambda: write_case(generate_case(7), scratch / "case"),
            )
            ids = step(
                "upload the scans, encrypted as they stream", lambda: asyncio.run(upload_case(settings, keys, files))
            )
            spec = JobSpec(ORG, "job-1", ids["upper"], ids["lower"], (ids["bite"], ids["bite2"]))
            code = step(
                "run the aligner job (mesial job run) from and to the encrypted store",
                lambda: asyncio.run(run_job(spec, settings)),
            )
            status = step(
                f"fetch the results, decrypted, into {OUT}/",
                lambda: asyncio.run(fetch_results(settings, keys, "job-1")),
            )
            tre = lower_tre_mm(json.loads((OUT / "result.json").read_text()), files["truth"], files["lower"])
            summary(status, tre)
            step("rotate the key, rewrap, legal hold, delete", lambda: asyncio.run(lifecycle(settings, keys, ids)))
            receipt = step(f"crypto-shred org-{ORG}", lambda: keys.shred(ORG))
            console.print(f"    {receipt.proof}")
            try:
                keys.key_info(ORG)
            except KeyNotFound as exc:
                console.print(f"    {exc}")
        finally:
            stack.stop()
    console.rule("done")
    console.print(f"Job exit code {code} (0 aligned, 3 not confident). Report: {OUT / 'report.html'}")
    console.print("Not built into the demo yet: the tenant API, the audit chain and the operator (issues 4 and 5).")
    return 0


def _ensure(keys: TenantKeys) -> Any:
    keys.ensure_transit()
    return keys.ensure_key(ORG)


if __name__ == "__main__":
    sys.exit(main())
