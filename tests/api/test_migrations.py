"""The migration runner and the append-only triggers, on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from tortoise.context import TortoiseContext
from tortoise.exceptions import BaseORMException

from mesial.api import migrations
from mesial.common import services as svc
from mesial.common.errors import ConfigurationError

GENESIS = "0" * 64
EVENT_INSERT = (
    "INSERT {verb} audit_events ({id}tenant, sequence, time, actor, source_ip, action, resource_type, resource_id, "
    "outcome, request_id, details, previous_hash, hash) VALUES "
    "({id_value}'t', {sequence}, '2026-01-01T00:00:00.000000Z', 'a', '', 'x.y', 'scan', 'r', 'success', '', '{{}}', "
    "'{previous}', '{hash}'){tail}"
)


def event_insert(
    sequence: int, previous: str, digest: str, *, verb: str = "INTO", id_value: int | None = None, tail: str = ""
) -> str:
    return EVENT_INSERT.format(
        verb=verb,
        id="" if id_value is None else "id, ",
        id_value="" if id_value is None else f"{id_value}, ",
        sequence=sequence,
        previous=previous,
        hash=digest,
        tail=tail,
    )


AUDIT_ROW = event_insert(1, GENESIS, "h")
CHECKPOINT_ROW = (
    "INSERT INTO audit_checkpoints (tenant, sequence, head_hash, time, signature) "
    "VALUES ('t', 1, 'h', '2026-01-01T00:00:00.000000Z', 'vault:v1:AA==')"
)


@pytest.fixture(params=["sqlite", "postgres"])
async def connection(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, empty database of each dialect, as a tortoise connection (no models bound)."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'm.sqlite3'}"
    else:
        info: svc.ServiceInfo = request.getfixturevalue("postgres")
        name = f"mig_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(info.url)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        url = info.url.rsplit("/", 1)[0] + "/" + name
    context = TortoiseContext()
    with context:
        await context.init(db_url=url, modules={"models": ["mesial.api.migrations"]})  # a module without models
        try:
            yield context.db()
        finally:
            await context.close_connections()


async def test_migrations_apply_once_in_order(connection: Any) -> None:
    discovered = migrations.discover(migrations.dialect_of(connection))
    assert len(discovered) >= 3
    assert await migrations.migrate(connection) == list(range(1, len(discovered) + 1))
    assert await migrations.migrate(connection) == []
    rows = await connection.execute_query_dict("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows][:3] == [(1, "initial"), (2, "job_result"), (3, "break_glass")]
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in discovered]
    assert [r["checksum"] for r in rows] == [m.checksum for m in discovered]


async def test_audit_tables_are_append_only_in_the_database(connection: Any) -> None:
    await migrations.migrate(connection)
    dialect = migrations.dialect_of(connection)
    await connection.execute_script(AUDIT_ROW)
    await connection.execute_script(CHECKPOINT_ROW)
    for table in ("audit_events", "audit_checkpoints"):
        statements = [
            f"UPDATE {table} SET tenant = 'u'",
            f"DELETE FROM {table}",
            f"DELETE FROM {table} WHERE tenant = 't'",
        ]
        if dialect == "postgres":
            statements.append(f"TRUNCATE {table}")
        for statement in statements:
            with pytest.raises(BaseORMException, match="append-only"):
                await connection.execute_script(statement)
        rows = await connection.execute_query_dict(f"SELECT tenant FROM {table}")
        assert [r["tenant"] for r in rows] == ["t"]
    # Other tables stay mutable.
    await connection.execute_script(
        "INSERT INTO organizations (id, name, retention_days, created_at) VALUES ('o1', 'lab', 90, '2026-01-01 00:00:00');"
        "UPDATE organizations SET retention_days = 30; DELETE FROM organizations;"
    )


async def test_audit_tables_take_only_a_new_head(connection: Any) -> None:
    """No write but a new head: no replace of the head (SQLite's INSERT OR REPLACE, which fires no
    DELETE trigger; PostgreSQL's ON CONFLICT DO UPDATE), no replace by id, no gap, no forged link."""
    await migrations.migrate(connection)
    dialect = migrations.dialect_of(connection)
    await connection.execute_script(AUDIT_ROW)
    await connection.execute_script(CHECKPOINT_ROW)
    head = await connection.execute_query_dict("SELECT id FROM audit_events")
    first_id = int(head[0]["id"])
    refused = [
        event_insert(1, GENESIS, "forged"),  # the head again
        event_insert(3, "h", "gap"),  # a gap
        event_insert(2, "not-the-head", "forged"),  # a new sequence not linked to the head
        event_insert(2, "h", "by-id", id_value=first_id),  # a new head that takes an old row's id
    ]
    if dialect == "sqlite":
        refused += [
            event_insert(1, GENESIS, "forged", verb="OR REPLACE INTO"),
            event_insert(1, GENESIS, "forged", verb="INTO").replace("INSERT INTO", "REPLACE INTO"),
            event_insert(2, "h", "by-id", verb="OR REPLACE INTO", id_value=first_id),
            event_insert(1, GENESIS, "forged", tail=" ON CONFLICT (tenant, sequence) DO UPDATE SET hash = 'x'"),
            CHECKPOINT_ROW.replace(
                "INSERT INTO audit_checkpoints (", "INSERT OR REPLACE INTO audit_checkpoints (id, "
            ).replace("VALUES (", "VALUES (1, "),
        ]
    else:
        refused += [
            event_insert(1, GENESIS, "forged", tail=" ON CONFLICT (tenant, sequence) DO UPDATE SET hash = 'x'"),
            event_insert(2, "h", "by-id", id_value=first_id, tail=" ON CONFLICT (id) DO UPDATE SET hash = 'x'"),
            CHECKPOINT_ROW.replace("INSERT INTO audit_checkpoints (", "INSERT INTO audit_checkpoints (id, ").replace(
                "VALUES (", "VALUES (1, "
            )
            + " ON CONFLICT (id) DO UPDATE SET signature = 'vault:v1:BB=='",
        ]
    for statement in refused:
        with pytest.raises(BaseORMException, match="append-only"):
            await connection.execute_script(statement)
        rows = await connection.execute_query_dict("SELECT id, sequence, hash FROM audit_events ORDER BY id")
        assert [(int(r["id"]), int(r["sequence"]), r["hash"]) for r in rows] == [(first_id, 1, "h")], statement
        checkpoints = await connection.execute_query_dict("SELECT signature FROM audit_checkpoints")
        assert [c["signature"] for c in checkpoints] == ["vault:v1:AA=="], statement
    await connection.execute_script(event_insert(2, "h", "h2"))  # the one write that is allowed
    await connection.execute_script(AUDIT_ROW.replace("'t'", "'t2'"))  # another tenant's first event
    rows = await connection.execute_query_dict("SELECT tenant, sequence FROM audit_events ORDER BY id")
    assert [(r["tenant"], int(r["sequence"])) for r in rows] == [("t", 1), ("t", 2), ("t2", 1)]


async def test_a_changed_or_unknown_migration_is_refused(connection: Any, tmp_path: Path) -> None:
    package = tmp_path / "fake_migrations_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "m0001_first.py").write_text(
        'SQL = {"sqlite": "CREATE TABLE a (x INT);", "postgres": "CREATE TABLE a (x INT);"}'
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert await migrations.migrate(connection, "fake_migrations_pkg") == [1]
        (package / "m0002_broken.py").write_text(
            'SQL = {"sqlite": "CREATE TABLE b (x INT); NOT SQL;", "postgres": "CREATE TABLE b (x INT); NOT SQL;"}'
        )
        with pytest.raises(BaseORMException):
            await migrations.migrate(connection, "fake_migrations_pkg")
        tables = await connection.execute_query_dict("SELECT version FROM schema_migrations")
        assert [t["version"] for t in tables] == [1]  # the failed migration left nothing behind
        (package / "m0002_broken.py").unlink()
        sys.modules.pop("fake_migrations_pkg.m0001_first", None)
        (package / "m0001_first.py").write_text(
            'SQL = {"sqlite": "CREATE TABLE a (y INT);", "postgres": "CREATE TABLE a (y INT);"}'
        )
        with pytest.raises(ConfigurationError, match="changed after it was applied"):
            await migrations.migrate(connection, "fake_migrations_pkg")
        (package / "m0001_first.py").unlink()
        sys.modules.pop("fake_migrations_pkg.m0001_first", None)
        with pytest.raises(ConfigurationError, match="does not know"):
            await migrations.migrate(connection, "fake_migrations_pkg")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("fake_migrations_pkg")]:
            sys.modules.pop(name)
