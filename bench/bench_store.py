"""Encrypted object store throughput against plain S3 put/get of the same bytes.

    python bench/bench_store.py [--size-mib 512] [--repeat 3] [--quick]

Starts its own OpenBao and SeaweedFS (S3) on free loopback ports. The plain baseline
uses the same client, the same multipart part size and the same upload path, without
the envelope: the ratio isolates what sealing, hashing and Vault's data key cost.

Goal (exit status 1 if it fails): encrypted upload and download each reach at least
70% of plain throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from _common import hardware, table

from mesial.common.objectstore import ObjectStore, _body_chunks
from mesial.common.services import running
from mesial.common.settings import StoreSettings, VaultSettings
from mesial.common.vault import TenantKeys

MIB = 1 << 20
GOAL = 0.70
ORG = "bench"


def source(size: int, block: bytes) -> AsyncIterator[bytes]:
    async def pieces() -> AsyncIterator[bytes]:
        for index in range(size // len(block)):
            yield index.to_bytes(8, "big") + block[8:]

    return pieces()


async def plain_put(store: ObjectStore, key: str, size: int, block: bytes) -> None:
    await store._upload(key, source(size, block), {}, {})


async def plain_get(store: ObjectStore, key: str) -> int:
    response = await store.client.get_object(Bucket=store.bucket, Key=key)
    body = response["Body"]
    total = 0
    try:
        async for piece in _body_chunks(body, key):
            total += len(piece)
    finally:
        body.close()
    return total


async def encrypted_get(store: ObjectStore, relative: str) -> int:
    total = 0
    async for piece in store.get(ORG, relative):
        total += len(piece)
    return total


async def measure(store: ObjectStore, size: int, repeat: int) -> dict[str, float]:
    block = bytes(range(256)) * (MIB // 256)
    best: dict[str, float] = {}

    async def timed(name: str, coro: object) -> None:
        started = time.perf_counter()
        await coro  # type: ignore[misc]
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)

    for _ in range(repeat):
        # Alternate the two so that drift in the machine's load touches both alike.
        await timed("plain put", plain_put(store, f"tenants/{ORG}/plain", size, block))
        await timed("encrypted put", store.put(ORG, "sealed", source(size, block)))
        await timed("plain get", plain_get(store, f"tenants/{ORG}/plain"))
        await timed("encrypted get", encrypted_get(store, "sealed"))
    return best


async def run(size_mib: int, repeat: int) -> int:
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp), ["openbao", "seaweedfs"]) as infos:
        bao, s3 = infos["openbao"], infos["seaweedfs"]
        keys = TenantKeys(VaultSettings(addr=bao.url, token=bao.credentials["root_token"]))
        keys.ensure_transit()
        keys.ensure_key(ORG)
        settings = StoreSettings(
            endpoint_url=s3.url,
            access_key=s3.credentials["access_key"],
            secret_key=s3.credentials["secret_key"],
            bucket=s3.credentials["bucket"],
        )
        async with ObjectStore(settings, keys) as store:
            best = await measure(store, size_mib * MIB, repeat)
    size = size_mib * MIB
    rows = []
    failed = False
    for direction in ("put", "get"):
        plain = size / best[f"plain {direction}"] / MIB
        sealed = size / best[f"encrypted {direction}"] / MIB
        ratio = sealed / plain
        ok = ratio >= GOAL
        failed |= not ok
        rows.append(
            [direction, f"{plain:.0f}", f"{sealed:.0f}", f"{ratio:.0%}", f">= {GOAL:.0%}", "PASS" if ok else "FAIL"]
        )
    print(f"hardware: {hardware()}")
    print(
        f"object: {size_mib} MiB, S3 part {settings.part_size // MIB} MiB, envelope chunk "
        f"{settings.chunk_size // MIB} MiB, best of {repeat}; SeaweedFS S3 gateway on loopback"
    )
    print("baseline: plain (unencrypted) multipart put / streamed get of the same bytes, same client\n")
    print(table(["direction", "plain MiB/s", "encrypted MiB/s", "ratio", "goal", "result"], rows))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 MiB, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.repeat = 64, 1
    return asyncio.run(run(args.size_mib, args.repeat))


if __name__ == "__main__":
    sys.exit(main())
