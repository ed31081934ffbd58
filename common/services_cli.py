"""``mesial services``: the local stack of real services, for trying things by hand."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mesial.common import services as svc
from mesial.common.settings import get_settings

console = Console()


def _state_file(base: Path) -> Path:
    return base / "services.json"


def _base_dir(directory: Path | None) -> Path:
    return (directory or get_settings().data_dir / "services").resolve()


@click.group()
def services() -> None:
    """Start, inspect and stop the local PostgreSQL, OpenBao and SeaweedFS (S3)."""


@services.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Data directory [.mesial/services].")
@click.option(
    "--only",
    type=click.Choice(sorted(svc.SERVICES)),
    multiple=True,
    help="Start only these (repeatable). Default: all.",
)
def up(directory: Path | None, only: tuple[str, ...]) -> None:
    """Start the stack on free loopback ports and print URLs and credentials."""
    base = _base_dir(directory)
    state = _state_file(base)
    if svc.read_state(state):
        raise click.ClickException(f"a stack is already recorded in {state}: run `mesial services down` first")
    with console.status("starting services…"):
        stack = svc.ServiceStack(base, list(only) or None)
        infos = stack.start()
    svc.write_state(state, infos)
    _show(infos)
    console.print(f"\nState (with credentials, mode 600): {state}")
    console.print('Use them in a shell:  [bold]eval "$(mesial services env)"[/bold]')


@services.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Data directory [.mesial/services].")
def down(directory: Path | None) -> None:
    """Stop the stack that `up` started."""
    stopped = svc.stop_recorded(_state_file(_base_dir(directory)))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@services.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Data directory [.mesial/services].")
def status(directory: Path | None) -> None:
    """Show what `up` started, and whether each of its processes still runs."""
    infos = svc.read_state(_state_file(_base_dir(directory)))
    if not infos:
        console.print("no services recorded")
        return
    stopped = _stopped(infos)
    _show(infos, stopped)
    if stopped:
        console.print(f"\n{_NOT_RUNNING}")


@services.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Data directory [.mesial/services].")
def env(directory: Path | None) -> None:
    """Print `export MESIAL_...=...` lines for the running stack (refused if a recorded process is gone)."""
    infos = svc.read_state(_state_file(_base_dir(directory)))
    stopped = _stopped(infos)
    if stopped:
        why = "; ".join(f"{name}: {reason}" for name, reason in stopped.items())
        raise click.ClickException(f"{_NOT_RUNNING} ({why})")
    for info in infos.values():
        for key, value in info.env.items():
            click.echo(f"export {key}='{value}'")


_NOT_RUNNING = (
    "the recorded stack is not running (the machine restarted, or its processes were killed): "
    "`mesial services down` clears its record, then `mesial services up` starts it again"
)


def _stopped(infos: dict[str, svc.ServiceInfo]) -> dict[str, str]:
    """The recorded services whose process no longer runs them, and why."""
    return {name: reason for name, info in infos.items() if (reason := svc.why_stopped(info)) is not None}


def _show(infos: dict[str, svc.ServiceInfo], stopped: dict[str, str] | None = None) -> None:
    # One block per service: URLs and secrets are long and must print whole to be copied.
    for name, info in infos.items():
        table = Table(title=f"{info.name} (pid {info.pid})", show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        if stopped is not None:
            table.add_row("state", f"stopped: {stopped[name]}" if name in stopped else "running")
        table.add_row("url", info.url)
        for key, value in info.credentials.items():
            table.add_row(key, value)
        table.add_row("log", info.log)
        console.print(table)
