"""A small real job for the executor tests, following the ``mesial job run`` contract.

Same arguments as ``mesial job run``. It reads (decrypts) every input scan from the
store, writes the progress document of :mod:`mesial.common.contract` after each stage and
one artifact (``summary.json``: the inputs' sizes and SHA-256). ``--behaviour`` (put in
the app's ``job_command`` by a test) makes it ``fail`` (exit 3) or ``sleep`` for a minute,
or ``probe`` its store credentials: it lists its own tenant's prefix and ``--other``'s and says
in its message which it reached (exit 0 only for its own alone).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from typing import Any

from mesial.common.contract import JobProgress, write_progress
from mesial.common.errors import StorageError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--org", required=True)
    parser.add_argument("--job-id", dest="job", required=True)
    parser.add_argument("--upper", required=True)
    parser.add_argument("--lower", required=True)
    parser.add_argument("--bite", action="append", default=[])
    parser.add_argument("--contact-threshold", type=float, default=0.1)
    parser.add_argument("--no-optimise", action="store_true")
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--behaviour", choices=["ok", "fail", "sleep", "probe"], default="ok")
    parser.add_argument("--other", default="")
    args = parser.parse_args(argv)
    settings = Settings()
    async with ObjectStore(settings.store, TenantKeys(settings.vault)) as store:
        if args.behaviour == "probe":
            reached = [org for org in (args.org, args.other) if await _lists(store, org)]
            await write_progress(store, args.org, args.job, JobProgress(stage="probe", message=f"reached {reached}"))
            return 0 if reached == [args.org] else 1

        async def status(**fields: Any) -> None:
            await write_progress(store, args.org, args.job, JobProgress(**fields))

        await status(stage="loading", percent=10)
        inputs = {}
        for scan_id in [args.upper, args.lower, *args.bite]:
            data = await store.read_bytes(args.org, f"scans/{scan_id}")
            inputs[scan_id] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        await status(stage="registration", percent=50, metrics={"inputs": len(inputs)})
        deadline = time.monotonic() + (60 if args.behaviour == "sleep" else 0)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if args.behaviour == "fail":
            await status(stage="failed", percent=50, message="alignment failed: insufficient overlap")
            return 3
        run = {"contact_threshold": args.contact_threshold, "optimise": not args.no_optimise}
        summary = json.dumps({"inputs": inputs, "options": run}, sort_keys=True).encode()
        artifact = f"jobs/{args.job}/artifacts/summary.json"
        await store.put(args.org, artifact, summary)
        await status(
            stage="succeeded",
            percent=100,
            metrics={"rmse_mm": 0.042, "inputs": len(inputs)},
            artifacts=[artifact, "jobs/elsewhere/artifacts/x.json"],  # the second must be ignored
        )
    return 0


async def _lists(store: ObjectStore, org: str) -> bool:
    try:
        async for _ in store.list(org, "scans/"):
            break
    except StorageError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
