"""``mesial align`` and ``mesial samples``: the aligner on the command line (a rich progress bar on
stderr; with ``--json`` none, and rich is not imported)."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

R = TypeVar("R")

EXIT_OK, EXIT_INVALID, EXIT_NOT_CONFIDENT = 0, 2, 3
# glibc's mallopt parameters (malloc.h) and what `mesial align` sets them to: two arenas (one per core the aligner
# uses), and from the start the thresholds glibc's own adjustment ends at after freeing large blocks (blocks below
# 32 MiB come from the arenas and go back to them; 64 MiB free at an arena's top before it is given back)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_SETTINGS = ((M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20))
MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """Set :data:`MALLOC_SETTINGS` in glibc's malloc for this process, unless it chose (one of
    :data:`MALLOC_VARIABLES` set); whether they were set.

    A case allocates and frees arrays of a few MB by the hundred, on several threads. By default every
    thread that allocates while others do gets an arena of its own (up to eight per core), so memory one
    thread freed is seldom what the next one allocates, and a block above the mmap threshold (128 KiB
    until glibc has freed larger blocks) is mapped and unmapped each time: fresh pages are faulted in and
    zeroed again, about 2 µs a page here. On the generated 130 000-vertex two-bite cases: 59 000-72 000
    page faults a process by default, 45 000-52 000 with two arenas, 41 000-47 000 with the thresholds too;
    the peak memory a fifth lower. Where the arrays live changes no result. A no-op where the C library
    has no ``mallopt`` (not glibc); to be called before the process starts threads.
    """
    if any(name in os.environ for name in MALLOC_VARIABLES):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        return all([bool(mallopt(parameter, value)) for parameter, value in MALLOC_SETTINGS])
    except (OSError, AttributeError):
        return False


@click.command()
@click.option("--upper", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Upper arch scan.")
@click.option("--lower", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Lower arch scan.")
@click.option(
    "--bite", "bites", type=click.Path(dir_okay=False, path_type=Path), multiple=True, required=True,
    help="Buccal bite scan (once or twice); the first one defines the output frame.",
)  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--contact-threshold", type=float, default=0.1, show_default=True, help="Contact distance, mm.")
@click.option("--no-optimise", is_flag=True, help="Do not correct bite-through (penetration).")
@click.option("--unit", type=click.Choice(["m", "cm", "in"]), default=None, help="Rescale scans from this unit.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Recorded in result.json's params; changes no result (no step draws at random). Kept so scripts that pass it still run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print result.json on stdout.")
def align(
    upper: Path,
    lower: Path,
    bites: tuple[Path, ...],
    out: Path,
    contact_threshold: float,
    no_optimise: bool,
    unit: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Put two arches into occlusion through buccal bite scans and measure the contacts.

    Exit 0 when aligned, 2 on invalid input, 3 when the alignment is not confident.
    """
    tune_malloc()  # before any thread starts (see there)
    from mesial.common.limits import aligner_limits

    if len(bites) > 2:
        raise click.UsageError("at most two --bite scans")
    max_bytes, max_triangles = aligner_limits()
    # the files are read and hashed on a thread while NumPy and the pipeline are imported (one core busy)
    from mesial.aligner._prefetch import FilePrefetch

    prefetched = FilePrefetch([upper, lower, *bites], max_bytes)

    from mesial.aligner.params import AlignParams, OcclusionParams
    from mesial.aligner.pipeline import AlignmentResult, Progress, align_scans
    from mesial.aligner.report import write_artifacts, write_result
    from mesial.common import __version__

    def run(progress: Progress | None) -> AlignmentResult:
        return align_scans(
            upper,
            lower,
            list(bites),
            params=AlignParams(seed=seed),
            occlusion=OcclusionParams(contact_threshold_mm=contact_threshold, optimise=not no_optimise),
            max_bytes=max_bytes,
            max_triangles=max_triangles,
            unit=unit,
            progress=progress,
            prefetched=prefetched,
        )

    say: Callable[[str], None]
    if as_json:  # the document is the output: no progress bar, and rich is not even imported
        result = run(None)
        say = functools.partial(click.echo, err=True)
    else:
        result, say = _with_progress_bar(run)

    def tag(colour: str, text: str) -> str:  # rich markup on the console, plain text beside --json
        return text if as_json else f"[{colour}]{text}[/{colour}]"

    # the verdict first: result.json, then the answer on the terminal, then the pictures
    result_path = write_result(result, out, __version__)
    if as_json:
        click.echo(result_path.read_text(), nl=False)
        sys.stdout.flush()  # a pipe reads the verdict now, not when the pictures are done
    if result.status == "invalid_input":
        say(f"{tag('red', 'invalid input:')} {result.reasons[0]}")
    elif result.status == "not_confident":
        say(f"{tag('yellow', 'not confident:')} " + "; ".join(result.reasons))
    elif not as_json:
        document = json.loads(result_path.read_text())
        for arch, values in document["occlusion"]["after"].items():
            say(
                f"{arch}: contact {values['contact_area_mm2']:.2f} mm², {values['patches']} patches, "
                f"max penetration {values['max_penetration_mm']:.3f} mm"
            )
    write_artifacts(result, out)
    if result.status == "ok" and not as_json:
        say(f"{tag('green', 'ok')}: {out}")
    sys.exit({"ok": EXIT_OK, "invalid_input": EXIT_INVALID}.get(result.status, EXIT_NOT_CONFIDENT))


def _with_progress_bar(run: Callable[[Any], R]) -> tuple[R, Callable[[str], None]]:
    """``run(progress)`` under a rich progress bar on stderr; and a printer to that console."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, fraction: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=1.0)
            bar.update(tasks[stage], completed=fraction)

        return run(progress), console.print


@click.group()
def samples() -> None:
    """Synthetic cases with ground truth (demo, tests, benchmarks)."""


@samples.command("generate")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--noise", type=float, default=0.02, show_default=True, help="Bite scanner noise, mm.")
@click.option("--one-sided", is_flag=True, help="One bite scan (right side) instead of two.")
@click.option("--vertices", type=int, default=150_000, show_default=True, help="Vertices per arch.")
@click.option("--format", "arch_format", type=click.Choice(["ply", "stl"]), default="ply", show_default=True)
def generate(out: Path, seed: int, noise: float, one_sided: bool, vertices: int, arch_format: str) -> None:
    """Write upper, lower, bite scan(s) in random poses and truth.json."""
    from rich.console import Console

    from mesial.aligner.samples import generate_case, write_case

    case = generate_case(seed, noise_mm=noise, one_sided=one_sided, vertices=vertices)
    paths = write_case(case, out, arch_format=arch_format)
    Console(stderr=True).print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")
