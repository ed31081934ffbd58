"""A small migration runner: numbered SQL migrations per dialect, applied once, in order.

Each module ``mNNNN_<name>.py`` in this package holds ``SQL = {"postgres": ..., "sqlite":
...}``. The runner applies the pending ones in order, each in one transaction together
with its row in ``schema_migrations`` (version, name, SHA-256 of the script), and refuses
to start if an applied migration's script changed since: migrations are append-only too.
Two runners racing on PostgreSQL cannot both apply a version (primary key): the loser
fails and the next start finds it applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import pkgutil
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mesial.common.audit import format_time
from mesial.common.errors import ConfigurationError

_NAME_RE = re.compile(r"^m(\d{4})_([a-z0-9_]+)$")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INT PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    applied_at VARCHAR(40) NOT NULL
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def dialect_of(connection: Any) -> str:
    """``postgres`` or ``sqlite`` for a tortoise connection."""
    name = type(connection).__module__
    if "sqlite" in name:
        return "sqlite"
    if "asyncpg" in name or "postgres" in name or "psycopg" in name:
        return "postgres"
    raise ConfigurationError(f"unsupported database backend {name}")


def discover(dialect: str, package: str = __name__) -> list[Migration]:
    """The migrations of ``package`` in version order; a gap or duplicate is an error."""
    module = importlib.import_module(package)
    found: list[Migration] = []
    for info in pkgutil.iter_modules(module.__path__):
        match = _NAME_RE.fullmatch(info.name)
        if match is None:
            continue
        sql: dict[str, str] = importlib.import_module(f"{package}.{info.name}").SQL
        if dialect not in sql:
            raise ConfigurationError(f"migration {info.name} has no {dialect} script")
        found.append(Migration(int(match.group(1)), match.group(2), sql[dialect]))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ConfigurationError(f"migrations are not numbered 1..n: {migration.version} where {expected} was due")
    return found


async def applied(connection: Any) -> dict[int, str]:
    """Version → checksum of every applied migration."""
    await connection.execute_script(_BOOKKEEPING)
    rows = await connection.execute_query_dict("SELECT version, checksum FROM schema_migrations")
    return {int(row["version"]): str(row["checksum"]) for row in rows}


async def migrate(connection: Any, package: str = __name__) -> list[int]:
    """Apply the pending migrations; returns the versions applied now."""
    dialect = dialect_of(connection)
    done = await applied(connection)
    known = discover(dialect, package)
    versions = {m.version for m in known}
    for version, checksum in done.items():
        if version not in versions:
            raise ConfigurationError(f"database has migration {version}, which this build does not know (downgrade?)")
        migration = known[version - 1]
        if migration.checksum != checksum:
            raise ConfigurationError(f"migration {version} ({migration.name}) changed after it was applied")
    now_applied: list[int] = []
    for migration in known:
        if migration.version in done:
            continue
        record = (
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES "
            f"({migration.version}, '{migration.name}', '{migration.checksum}', '{format_time(datetime.now(UTC))}');"
        )
        script = f"BEGIN;\n{migration.sql}\n{record}\nCOMMIT;"
        try:
            await connection.execute_script(script)
        except BaseException:
            if dialect == "sqlite":  # executescript leaves a failed transaction open
                with contextlib.suppress(Exception):
                    await connection.execute_script("ROLLBACK;")
            raise
        now_applied.append(migration.version)
    return now_applied
