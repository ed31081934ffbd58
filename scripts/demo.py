"""`make demo`: Mesial's main job end to end on embedded defaults, printed step by step.

No cluster: OpenBao (the Vault API) and SeaweedFS (S3) run locally on free ports in a
scratch directory and are stopped at the end. What is not built yet is said so, not
pretended.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from mesial.common.errors import KeyNotFound
from mesial.common.objectstore import ObjectStore
from mesial.common.services import ServiceStack
from mesial.common.settings import StoreSettings, VaultSettings
from mesial.common.vault import TenantKeys

ORG = "demo-lab"
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


async def storage_flow(keys: TenantKeys, store_settings: StoreSettings, files: dict[str, Path]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with ObjectStore(store_settings, keys) as store:
        uploaded = Table(title="Encrypted uploads", title_justify="left")
        for column in ("object", "bytes", "sha256", "key version", "parts"):
            uploaded.add_column(column)
        for name, path in files.items():
            stored = await store.put(ORG, f"scans/{name}", path.read_bytes())
            uploaded.add_row(
                stored.key, f"{stored.size:,}", stored.sha256[:16] + "…", str(stored.key_version), str(stored.parts)
            )
            report[name] = stored
        console.print(uploaded)

        name, path = next(iter(files.items()))
        raw = await store.client.get_object(Bucket=store.bucket, Key=f"tenants/{ORG}/scans/{name}")
        at_rest = await raw["Body"].read()
        console.print(
            f"    at rest: {len(at_rest):,} bytes starting {at_rest[:4]!r}; plaintext absent: {path.read_bytes()[:32] not in at_rest}"
        )
        back = await store.read_bytes(ORG, f"scans/{name}")
        ok = hashlib.sha256(back).hexdigest() == report[name].sha256
        console.print(f"    read back and authenticated {name}: SHA-256 {'matches' if ok else 'DIFFERS'}")
        if not ok:
            raise SystemExit("demo failed: read-back mismatch")

        rotated = await asyncio.to_thread(keys.rotate, ORG)
        versions = [await store.rewrap(ORG, f"scans/{n}") for n in files]
        console.print(
            f"    rotated org-{ORG} to v{rotated.latest_version}; rewrapped {len(versions)} objects without re-encrypting data"
        )

        held = next(iter(files))
        await store.set_legal_hold(ORG, f"scans/{held}", True)
        deletion = await store.delete_prefix(ORG, "scans/")
        console.print(
            f"    legal hold on {held}; deletion sweep removed {deletion.deleted}, kept {deletion.held} held object(s)"
        )
        report["held"] = held
    return report


def main() -> int:
    console.rule("Mesial demo — embedded defaults (local services, no cluster)")
    with tempfile.TemporaryDirectory(prefix="mesial-demo-") as tmp:
        scratch = Path(tmp)
        stack = ServiceStack(scratch / "services", ["openbao", "seaweedfs"])
        services = step("start OpenBao (Vault API) and SeaweedFS (S3) on free loopback ports", stack.start)
        try:
            bao, s3 = services["openbao"], services["seaweedfs"]
            keys = TenantKeys(VaultSettings(addr=bao.url, token=bao.credentials["root_token"]))
            info = step(f"create organization key org-{ORG} (aes256-gcm96, not exportable)", lambda: _ensure(keys))
            console.print(f"    key version {info.latest_version}, fingerprint {info.fingerprint}")
            console.print("[yellow]    the aligner is not wired into the demo yet: placeholder scan bytes[/yellow]")
            files = _placeholder_files(scratch)
            store_settings = StoreSettings(
                endpoint_url=s3.url,
                access_key=s3.credentials["access_key"],
                secret_key=s3.credentials["secret_key"],
                bucket=s3.credentials["bucket"],
            )
            step(
                "upload encrypted, read back, rotate + rewrap, legal hold, sweep",
                lambda: asyncio.run(storage_flow(keys, store_settings, files)),
            )
            receipt = step(f"crypto-shred org-{ORG}", lambda: keys.shred(ORG))
            console.print(f"    {receipt.proof}")
            try:
                keys.key_info(ORG)
            except KeyNotFound as exc:
                console.print(f"    {exc}")
        finally:
            stack.stop()
    console.rule("done")
    console.print("Not built yet (open issues): alignment in the flow, tenant API, audit chain, operator.")
    return 0


def _ensure(keys: TenantKeys) -> Any:
    keys.ensure_transit()
    return keys.ensure_key(ORG)


def _placeholder_files(scratch: Path) -> dict[str, Path]:
    files = {}
    for name in ("upper", "lower", "bite"):
        path = scratch / f"{name}.bin"
        path.write_bytes(hashlib.sha256(name.encode()).digest() * 4096)
        files[name] = path
    return files


if __name__ == "__main__":
    sys.exit(main())
