"""Write transactions that wait for other connections to the database instead of failing.

On SQLite, tortoise begins a transaction with a plain ``BEGIN`` (deferred): the first read
takes a snapshot, and the first write then needs the write lock *on that snapshot*. When
another connection to the same file (``mesial admin`` beside a local-mode server, a second
app) has committed since the read, SQLite cannot let the transaction write on stale data and
refuses at once with "database is locked" (``SQLITE_BUSY_SNAPSHOT``): the busy timeout does
not apply, so a request read-then-writing (an audit append: the chain's head, then the new
event) failed with a 503 whenever another connection wrote in between.

:func:`write_transaction` begins with ``BEGIN IMMEDIATE`` on SQLite instead: the write lock is
taken before the first read, waiting (under the connection's busy timeout, Python's sqlite3
default of 5 s: these transactions are a few statements, held for milliseconds) for a writer of
another connection to finish; its reads then see the latest commit and nothing can make them
stale before the commit. Writers of one database take turns, readers are not blocked (WAL).
On PostgreSQL it is :func:`tortoise.transactions.in_transaction` unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tortoise.backends.base.client import TransactionalDBClient
from tortoise.transactions import in_transaction


@asynccontextmanager
async def write_transaction() -> AsyncIterator[TransactionalDBClient]:
    """:func:`~tortoise.transactions.in_transaction` holding SQLite's write lock from its start."""
    async with in_transaction() as conn:
        if conn.capabilities.dialect == "sqlite":
            # tortoise has run "BEGIN" and nothing since (it holds the connection for this
            # transaction alone), so ending that empty transaction loses nothing
            await conn.execute_query("ROLLBACK")
            await conn.execute_query("BEGIN IMMEDIATE")
        yield conn
