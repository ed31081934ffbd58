"""The real operator, in-process, against the kmock emulator, with the real OpenBao and SeaweedFS.

``harness`` starts a fresh emulator and operator per test (the services are the session's)
with short timer intervals and retry delays, so the suite runs in minutes. Each test uses
its own Organization names: tenants never meet in Vault or the bucket.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesial.common.audit_sinks import JsonlAuditSink
from mesial.common.services import free_port
from mesial.common.settings import OperatorSettings, Settings
from mesial.operator.k8s import K8s
from mesial.operator.runtime import Runtime
from mesial.operator.testing import Emulator, Harness, RecordedRequest, emulated
from tests.operator.helpers import organization, ready

_names = itertools.count(1)
# Runs after every other operator test: it judges the requests they all made.
LAST = "test_least_privilege.py"
RELEASE, RELEASE_NAMESPACE = "rel", "mesial-system"


@pytest.fixture(scope="session", autouse=True)
def operator_requests() -> Iterator[list[RecordedRequest]]:
    """Every request the operator makes to an emulator during the session, in order."""
    log: list[RecordedRequest] = []
    Emulator.request_log = log
    yield log
    Emulator.request_log = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.split("::")[0].endswith(LAST))


@pytest.fixture
def org_name() -> Callable[[str], str]:
    """Unique Organization names per run and test (Vault and the bucket are shared by the session)."""
    run = f"{os.getpid() % 10000:04d}"
    return lambda stem: f"{stem}-{run}-{next(_names)}"


@pytest.fixture
def operator_settings(service_settings: Settings, tmp_path: Path) -> Settings:
    op = OperatorSettings(
        drift_interval_s=1.0,
        scanjob_sync_interval_s=0.3,
        retention_tick_s=0.3,
        retry_delay_s=0.5,
        standalone=True,
        liveness_endpoint="",
        audit_jsonl_path=tmp_path / "audit.jsonl",
        # the names the chart renders for release "rel" in "mesial-system" (test_least_privilege.py)
        tenant_cluster_role=f"{RELEASE}-mesial-operator-tenant",
        service_account=f"{RELEASE_NAMESPACE}/{RELEASE}-mesial-operator",
    )
    return service_settings.model_copy(update={"operator": op})


@pytest.fixture
async def harness(operator_settings: Settings) -> AsyncIterator[Harness]:
    async def factory(k8s: K8s) -> Runtime:
        return await Runtime.create(
            operator_settings, k8s, audit=JsonlAuditSink(operator_settings.operator.audit_jsonl_path)
        )

    async with emulated(operator_settings, factory) as h:
        yield h


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last value: {last!r}")


async def organization_ready(k8s: K8s, name: str) -> str:
    """Create the Organization ``name`` (:func:`~tests.operator.helpers.organization`) and wait
    until the operator has made it Ready; returns its namespace."""
    await k8s.create(organization(name))
    await eventually(lambda: ready(k8s, name))
    return f"mesial-org-{name}"


class TcpProxy:
    """A TCP forwarder to a real service that a test can take down and bring back (same port)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


@pytest.fixture
async def vault_proxy(openbao: Any) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(int(openbao.url.rsplit(":", 1)[1]))
    await proxy.up()
    yield proxy
    await proxy.down()


@pytest.fixture
async def proxied_harness(operator_settings: Settings, vault_proxy: TcpProxy) -> AsyncIterator[Harness]:
    """The operator with Vault reached through ``vault_proxy`` (so a test can take Vault down)."""
    settings = operator_settings.model_copy(
        update={"vault": operator_settings.vault.model_copy(update={"addr": vault_proxy.url, "timeout_s": 1.0})}
    )

    async def factory(k8s: K8s) -> Runtime:
        return await Runtime.create(settings, k8s, audit=JsonlAuditSink(settings.operator.audit_jsonl_path))

    async with emulated(settings, factory) as h:
        yield h
