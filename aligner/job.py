"""``mesial job run``: the aligner Job entrypoint (Kubernetes Job and local executor alike).

The aligner library knows nothing of Vault or S3; this module adds the I/O. Its
arguments, keys and progress document are the job contract of
:mod:`mesial.common.contract` (one :class:`~mesial.common.contract.JobSpec`). One run:

1. reads the tenant's scans (``scan_key``) through the encrypted store (decrypted with
   the tenant's key, authenticated) into a private scratch dir;
2. runs :func:`mesial.aligner.align_scans` with the requested options;
3. writes every output as an encrypted artifact (``artifact_key``), ``result.json`` first;
4. keeps its progress document (``progress_key``, encrypted too) current: state, stage,
   percent, the result status and its flat numeric metrics as soon as ``result.json`` is
   stored (before the pictures are drawn), the artifact keys, and at the end the final
   state or a sanitized message. The operator and the API read it as untrusted input
   (``parse_progress`` keeps the fields it knows).

A tenant pod may not patch its ScanJob's status, so the status object is how progress
and results travel: the operator and the API read it. Exit codes: 0 the alignment ran
(``ok`` or ``not_confident``: the verdict is the status object's ``result_status``, since
a Kubernetes Job is either complete or failed), 2 invalid input (final), 1 failure of the
job itself (may be retried). ``mesial align`` exits 3 on ``not_confident``: a person reads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from mesial.aligner.cli import tune_malloc
from mesial.common.contract import (
    DEFAULT_CONTACT_THRESHOLD_MM,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    JobProgress,
    JobSpec,
    artifact_key,
    sanitize_text,
    scan_key,
    write_progress,
)
from mesial.common.errors import InputError, MesialError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings, get_settings
from mesial.common.vault import TenantKeys

# Progress writes are throttled: progress callbacks can fire many times a second.
MIN_STATUS_INTERVAL_S = 1.0


class StatusReporter:
    """Keeps the job's progress document current, at most once a second except for the last word."""

    def __init__(self, store: ObjectStore, org: str, job_id: str) -> None:
        self.store = store
        self.org = org
        self.job_id = job_id
        self.status = JobProgress(stage="starting")
        self._last = 0.0

    def update(self, **fields: Any) -> None:
        self.status = replace(self.status, **fields)

    async def publish(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < MIN_STATUS_INTERVAL_S:
            return
        self._last = now
        await write_progress(self.store, self.org, self.job_id, self.status)

    async def stage(self, stage: str, progress: float) -> None:
        self.update(stage=stage, percent=int(min(max(progress, 0.0), 1.0) * 100))
        await self.publish()

    async def finish(self, state: str, message: str = "") -> None:
        self.update(state=state, message=sanitize_text(message))
        if state == "succeeded":
            self.update(percent=100)
        await self.publish(force=True)


# Overall progress: each stage of the pipeline owns a slice of [0, 1].
STAGE_SLICES = {
    "download": (0.0, 0.1),
    "validate": (0.1, 0.2),
    "preprocess": (0.2, 0.25),
    "global": (0.25, 0.55),
    "refine": (0.55, 0.75),
    "occlusion": (0.75, 0.85),
    "report": (0.85, 0.95),
    "upload": (0.95, 1.0),
}


def overall(stage: str, fraction: float) -> float:
    low, high = STAGE_SLICES.get(stage, (0.0, 1.0))
    return low + (high - low) * min(max(fraction, 0.0), 1.0)


async def run_job(spec: JobSpec, settings: Settings, scratch_root: Path | None = None) -> int:
    """Run one job end to end; returns the exit code. Never raises for a failed alignment."""
    from mesial.aligner.params import OcclusionParams
    from mesial.aligner.pipeline import align_scans
    from mesial.aligner.report import write_artifacts, write_result
    from mesial.common import __version__

    keys = TenantKeys(settings.vault)
    async with ObjectStore(settings.store, keys) as store:
        reporter = StatusReporter(store, spec.org, spec.job_id)
        await reporter.publish(force=True)
        scratch = Path(tempfile.mkdtemp(prefix="mesial-job-", dir=scratch_root))
        scratch.chmod(0o700)  # decrypted scans: this process only
        try:
            inputs: dict[str, Path] = {}
            roles = [("upper", spec.upper), ("lower", spec.lower)]
            roles += [(f"bite{i + 1}", scan) for i, scan in enumerate(spec.bites)]
            for index, (role, scan_id) in enumerate(roles):
                await reporter.stage("download", index / len(roles))
                inputs[role] = await _download(store, spec.org, scan_key(scan_id), scratch / role)

            loop = asyncio.get_running_loop()
            pending: list[concurrent.futures.Future[None]] = []

            def progress(stage: str, fraction: float) -> None:
                # Called from the worker thread: hand the status write to the event loop.
                future = asyncio.run_coroutine_threadsafe(reporter.stage(stage, overall(stage, fraction)), loop)
                pending.append(future)

            limits = settings.aligner
            result = await asyncio.to_thread(
                align_scans,
                inputs["upper"],
                inputs["lower"],
                [inputs[role] for role, _ in roles[2:]],
                occlusion=OcclusionParams(contact_threshold_mm=spec.contact_threshold_mm, optimise=spec.optimise),
                max_bytes=limits.max_scan_bytes,
                max_triangles=limits.max_triangles,
                progress=progress,
            )
            for future in pending:  # every progress write lands before the final word
                await asyncio.wrap_future(future)
            await reporter.stage("report", 0.0)
            # the verdict first: result.json stored and the status object holding the result and its
            # metrics before the pictures are drawn (a reader polling the status need not wait for them)
            verdict = await asyncio.to_thread(write_result, result, scratch / "out", __version__)
            await _store_artifact(store, spec, reporter, verdict)
            reporter.update(result=result.status, metrics=flat_metrics(json.loads(verdict.read_text())))
            await reporter.publish(force=True)
            outputs = await asyncio.to_thread(write_artifacts, result, scratch / "out")
            names = sorted(outputs.items())
            for index, (_, path) in enumerate(names):
                await reporter.stage("upload", index / max(len(names), 1))
                await _store_artifact(store, spec, reporter, path)
            if result.status == "invalid_input":
                await reporter.finish("failed", f"invalid input: {result.reasons[0]}")
                return EXIT_INVALID
            if result.status == "not_confident":
                # The job did its work: the report and result.json say why the alignment is not
                # trusted. Exit 0, so that Kubernetes neither retries it nor calls it failed;
                # the verdict travels in the status object (`result_status`).
                await reporter.finish("succeeded", "not confident: " + "; ".join(result.reasons))
                return EXIT_OK
            await reporter.finish("succeeded")
            return EXIT_OK
        except MesialError as exc:
            invalid = isinstance(exc, InputError)
            if invalid:
                reporter.update(result="invalid_input")
            await reporter.finish("failed", _sanitized(exc))
            return EXIT_INVALID if invalid else EXIT_FAILED
        except Exception as exc:
            # The message names the error type only: internals stay in the pod's log.
            await reporter.finish("failed", f"internal error ({type(exc).__name__})")
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


async def _store_artifact(store: ObjectStore, spec: JobSpec, reporter: StatusReporter, path: Path) -> None:
    """Upload one output file under the job's artifact key and list it in the status."""
    key = artifact_key(spec.job_id, path.name)
    with path.open("rb") as handle:
        await store.put(spec.org, key, iter(lambda: handle.read(1 << 20), b""))
    reporter.update(artifacts=[*reporter.status.artifacts, key])


def flat_metrics(document: dict[str, Any], limit: int = 32) -> dict[str, float]:
    """The headline numbers of ``result.json`` as flat ``dotted.name: float`` pairs.

    Status readers keep only flat finite numbers with short names, so nested results are
    flattened here: registration quality, the contacts after optimisation, timings.
    """
    picked: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(picked) >= limit:
            return
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            if len(prefix) <= 64:
                picked[prefix] = float(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)

    walk("registration", document.get("registration", {}))
    walk("occlusion", document.get("occlusion", {}).get("after", {}))
    walk("timings_s", document.get("timings_s", {}))
    return picked


async def _download(store: ObjectStore, org: str, relative: str, path: Path) -> Path:
    """Decrypt an object into ``path`` (mode 600); removed if it does not authenticate whole."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            async for piece in store.get(org, relative):
                handle.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _sanitized(exc: MesialError) -> str:
    """One line for the status: the domain error's own message, without local paths."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.replace(str(Path(tempfile.gettempdir())), "<scratch>")[:300]


@click.group()
def job() -> None:
    """The aligner Job entrypoint (Kubernetes Jobs and the local executor)."""


@job.command("run")
@click.option("--org", required=True, help="Organization (tenant) name.")
@click.option("--job-id", required=True, help="Opaque job id; status and artifacts go under jobs/<job-id>/.")
@click.option("--upper", required=True, help="Scan id of the upper arch.")
@click.option("--lower", required=True, help="Scan id of the lower arch.")
@click.option("--bite", "bites", required=True, multiple=True, help="Scan id of a bite scan (once or twice).")
@click.option(
    "--contact-threshold",
    type=float,
    default=DEFAULT_CONTACT_THRESHOLD_MM,
    show_default=True,
    help="Contact distance, mm.",
)
@click.option("--no-optimise", is_flag=True, help="Do not correct bite-through.")
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where decrypted inputs live during the run (an emptyDir in a pod).",
)
def run(
    org: str,
    job_id: str,
    upper: str,
    lower: str,
    bites: tuple[str, ...],
    contact_threshold: float,
    no_optimise: bool,
    scratch: Path | None,
) -> None:
    """Align one case from the encrypted store and write its results back, encrypted."""
    tune_malloc()  # before any thread starts (as `mesial align`; see there)
    try:
        spec = JobSpec(org, job_id, upper, lower, bites, contact_threshold, not no_optimise)
    except InputError as exc:
        raise click.UsageError(str(exc)) from exc
    code = asyncio.run(run_job(spec, get_settings(), scratch))
    sys.exit(code)
