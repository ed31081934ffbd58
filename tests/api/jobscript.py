"""A small real job for the executor tests, following the ``mesial job run`` contract.

It reads (decrypts) every input scan from the store, writes progress, one artifact
(``summary.json``: the inputs' sizes and SHA-256) and the final status. Options:
``sleep`` (seconds, while "running"), ``fail`` (exit 3 with a failed status).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--org", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--upper", required=True)
    parser.add_argument("--lower", required=True)
    parser.add_argument("--bite", action="append", default=[])
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    settings = Settings()
    status_key = f"jobs/{args.job}/status.json"
    async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:

        async def status(**fields: object) -> None:
            await store.put(args.org, status_key, json.dumps(fields).encode())

        await status(state="running", progress=0.1)
        inputs = {}
        for scan_id in [args.upper, args.lower, *args.bite]:
            data = await store.read_bytes(args.org, f"scans/{scan_id}")
            inputs[scan_id] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        await status(state="running", progress=0.5)
        deadline = time.monotonic() + float(options.get("sleep", 0))
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if options.get("fail"):
            await status(state="failed", progress=0.5, message="alignment failed: insufficient overlap")
            return 3
        summary = json.dumps({"inputs": inputs}, sort_keys=True).encode()
        stored = await store.put(args.org, f"jobs/{args.job}/artifacts/summary.json", summary)
        await status(
            state="succeeded",
            progress=1.0,
            metrics={"rmse_mm": 0.042, "inputs": len(inputs)},
            artifacts=[{"name": "summary.json", "size": stored.size, "sha256": stored.sha256}],
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
