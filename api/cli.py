"""``mesial api`` (serve, migrate, openapi), ``mesial admin`` (bootstrap, organizations, keys)
and ``mesial audit`` (export, verify — verify needs nothing but the file)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mesial.api.types import KEY_TTL_DAYS, RETENTION_DAYS
from mesial.common.audit import PLATFORM_TENANT, AuditEvent, verify_export
from mesial.common.settings import Settings, get_settings

if TYPE_CHECKING:
    from mesial.api.audit.collector import Change

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Any]:
    from mesial.api.app import _current, open_database

    context = await open_database(settings, migrate=True)
    try:
        with _current(context):
            yield context
    finally:
        await context.close_connections()


def _run(work: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(work(get_settings()))


async def _audit_cli(
    settings: Settings,
    tenant: str,
    action: str,
    resource_type: str,
    change: Change | None = None,
    *,
    resource_id: str | None = None,
) -> None:
    """Append ``mesial admin``'s event, with ``change`` (if given) in its transaction. Bound to its
    tenant, action and resource type it is a :class:`~mesial.api.audit.collector.Commit`: what the
    change makes never outlives a failed append."""
    from tortoise.context import require_context

    from mesial.api.audit.collector import AuditCollector
    from mesial.api.migrations import dialect_of
    from mesial.common.vault import TenantKeys

    context = require_context()
    collector = AuditCollector(TenantKeys(settings.vault), dialect_of(context.db()))
    event = AuditEvent(tenant, "cli:admin", action, resource_type, resource_id or "")
    await collector.append_unless(event, None, change)


# -- mesial api ---------------------------------------------------------------------------
@click.group()
def api() -> None:
    """The tenant API server."""


@api.command()
@click.option("--host", default=None, help="Address to bind (default: settings api.host).")
@click.option("--port", default=None, type=int, help="Port (default: settings api.port).")
def serve(host: str | None, port: int | None) -> None:
    """Run the API with uvicorn (h11; its own 400s carry the security headers too)."""
    import uvicorn

    from mesial.api.app import create_app
    from mesial.api.logs import configure
    from mesial.api.server import server_config

    settings = get_settings()
    configure(settings.log_level)
    app = create_app(settings)
    uvicorn.Server(server_config(app, host or settings.api.host, port or settings.api.port)).run()


@api.command()
def migrate() -> None:
    """Apply pending database migrations."""

    async def work(settings: Settings) -> None:
        from mesial.api.app import _current, open_database
        from mesial.api.migrations import migrate as apply

        context = await open_database(settings, migrate=False)
        try:
            with _current(context):
                done = await apply(context.db())
        finally:
            await context.close_connections()
        click.echo(f"applied: {done or 'nothing (up to date)'}")

    _run(work)


@api.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
def openapi(output: Path | None) -> None:
    """Print the OpenAPI 3.1 document (docs/openapi.json is this output)."""
    from mesial.api.app import create_app
    from mesial.api.openapi import document

    text = json.dumps(document(create_app(Settings()).routes), indent=2, sort_keys=False) + "\n"
    if output:
        output.write_text(text)
    else:
        click.echo(text, nl=False)


# -- mesial admin -------------------------------------------------------------------------
@click.group()
def admin() -> None:
    """Bootstrap the platform admin, create organizations, issue keys (direct database access)."""


@admin.command()
@click.option("--force", is_flag=True, help="Issue another platform-admin key even if one exists.")
def bootstrap(force: bool) -> None:
    """Create the first platform admin and print its key (shown once)."""

    async def work(settings: Settings) -> str:
        from mesial.api.models import ApiKey
        from mesial.api.services.orgs import issue_member_key
        from mesial.api.types import Role

        async with _database(settings):
            if not force and await ApiKey.exists(role=Role.platform_admin.value, revoked_at=None):
                raise click.ClickException("a platform admin exists already (use --force for another key)")
            recorded = functools.partial(
                _audit_cli, settings, PLATFORM_TENANT, "platform_admin.bootstrapped", "api_key"
            )
            _, secret = await issue_member_key(None, Role.platform_admin, None, recorded)
            return secret

    click.echo(_run(work))


@admin.command("create-org")
@click.argument("name")
@click.option(
    "--retention-days",
    default=90,
    show_default=True,
    type=click.IntRange(RETENTION_DAYS.min, RETENTION_DAYS.max),
    help="Days scans and results are kept (legal holds excepted).",
)
def create_org(name: str, retention_days: int) -> None:
    """Create an organization (and its Vault key)."""

    async def work(settings: Settings) -> str:
        from mesial.api.services.orgs import create_org as create
        from mesial.common.vault import TenantKeys

        async with _database(settings):
            recorded = functools.partial(_audit_cli, settings, PLATFORM_TENANT, "org.created", "organization")
            org = await create(name, TenantKeys(settings.vault), retention_days, recorded)
            return str(org.id)

    click.echo(_run(work))


@admin.command("issue-key")
@click.option("--org", "org_name", required=True, help="Organization name.")
@click.option("--role", required=True, type=click.Choice(["org-admin", "clinician", "technician", "auditor"]))
@click.option(
    "--expires-in-days",
    type=click.IntRange(KEY_TTL_DAYS.min, KEY_TTL_DAYS.max),
    default=None,
    help="Days until the key expires (default: never).",
)
def issue_key(org_name: str, role: str, expires_in_days: int | None) -> None:
    """Issue a key for a new member of an organization; prints it once."""

    async def work(settings: Settings) -> str:
        from mesial.api.services.orgs import issue_member_key, org_by_name
        from mesial.api.types import Role

        async with _database(settings):
            org = await org_by_name(org_name)
            recorded = functools.partial(_audit_cli, settings, org.name, "key.issued", "api_key")
            _, secret = await issue_member_key(org.id, Role(role), expires_in_days, recorded)
            return secret

    click.echo(_run(work))


@admin.command("service-key")
@click.argument("service")
@click.option("--org", "org_name", default=None, help="Bind the key to one organization (jobs).")
def service_key(service: str, org_name: str | None) -> None:
    """Issue a service key: SERVICE is `operator` (platform-wide) or `job` (with --org); internal endpoints only,
    and only the audit events that service writes (api/services/ingest.py)."""

    async def work(settings: Settings) -> str:
        from mesial.api.services.orgs import issue_service_key, org_by_name

        async with _database(settings):
            org_id = (await org_by_name(org_name)).id if org_name else None
            recorded = functools.partial(
                _audit_cli, settings, org_name or PLATFORM_TENANT, "service_key.issued", "api_key"
            )
            _, secret = await issue_service_key(service, org_id, recorded)
            return secret

    click.echo(_run(work))


# -- mesial audit -------------------------------------------------------------------------
@click.group()
def audit() -> None:
    """Export a tenant's audit chain; verify an export offline."""


@audit.command()
@click.option("--org", "tenant", required=True, help=f"Organization name, or {PLATFORM_TENANT} for the platform chain.")
@click.option("--from", "start", type=click.DateTime(), default=None, help="Events at or after (UTC).")
@click.option("--to", "end", type=click.DateTime(), default=None, help="Events before (UTC).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export(tenant: str, start: datetime | None, end: datetime | None, output: Path) -> None:
    """Write a signed JSON Lines export (events, checkpoints, public key, manifest).

    An organization that has neither a row nor a chain (a mistyped name), and --from after --to, are
    errors: either would be an empty export that verifies. A deleted organization's chain still exports."""
    from datetime import UTC

    if start is not None and end is not None and start > end:
        raise click.UsageError("--from is after --to: the range selects no event")

    async def work(settings: Settings) -> None:
        from mesial.api.audit.collector import AuditCollector
        from mesial.api.migrations import dialect_of
        from mesial.api.models import AuditEventRow, Organization
        from mesial.common.vault import TenantKeys

        async with _database(settings) as context:
            if tenant != PLATFORM_TENANT and not (
                await Organization.exists(name=tenant) or await AuditEventRow.exists(tenant=tenant)
            ):
                raise click.ClickException(f"no organization or audit chain named {tenant}")
            keys = TenantKeys(settings.vault)
            await asyncio.to_thread(keys.ensure_transit)
            await asyncio.to_thread(keys.ensure_signing_key)
            collector = AuditCollector(keys, dialect_of(context.db()))
            with output.open("w") as handle:
                async for line in collector.export(
                    tenant, start.replace(tzinfo=UTC) if start else None, end.replace(tzinfo=UTC) if end else None
                ):
                    handle.write(line)

    _run(work)
    click.echo(f"wrote {output}")


@audit.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", default=None, help="Pinned ed25519 public key (base64) instead of the file's own.")
def verify(file: Path, public_key: str | None) -> None:
    """Verify an export offline; names the first bad line. Exit 0 if intact, 1 if not."""
    with file.open("rb") as handle:  # bytes: a line that is not UTF-8 is reported by number, not raised
        report = verify_export(handle, pinned_public_key=public_key)
    click.echo(str(report))
    if not report.ok:
        sys.exit(1)
