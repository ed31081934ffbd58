"""Fixtures shared by every test: the real services, started once per run on free ports.

A service starts the first time a test asks for it and stops when the run ends, so a
run that selects only pure tests starts nothing. Each run has its own directories and
ports: two runs (or two checkouts) on one machine do not meet.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from mesial.common import services as svc
from mesial.common.settings import Settings, StoreSettings, VaultSettings

ROOT = Path(__file__).resolve().parent.parent

# In CI every property test replays the same examples, so a red build means a change
# broke something; developers' runs draw new examples and keep exploring.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def _own_tempdir(prefix: str) -> Iterator[Path]:
    # Not under pytest's basetemp: pytest resets /tmp/pytest-of-<user> to mode 700 whenever
    # a session starts, which would lock PostgreSQL (run as `postgres`) out of its directory.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """The session's service data directories and logs, removed at the end."""
    yield from _own_tempdir("mesial-test-services-")


@pytest.fixture
def service_tmp() -> Iterator[Path]:
    """A directory for a test's own extra services (same reason as services_dir)."""
    yield from _own_tempdir("mesial-test-service-")


def _run_service(kind: type[svc.ManagedService], base: Path) -> Iterator[svc.ServiceInfo]:
    service = kind(base, tied_to_parent=True)
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[svc.ServiceInfo]:
    """A PostgreSQL 15 server with an empty `mesial` database."""
    yield from _run_service(svc.PostgresService, services_dir)


@pytest.fixture(scope="session")
def openbao(services_dir: Path) -> Iterator[svc.ServiceInfo]:
    """An OpenBao dev server (the Vault API); `credentials['root_token']` is its root token."""
    yield from _run_service(svc.OpenBaoService, services_dir)


@pytest.fixture(scope="session")
def seaweedfs(services_dir: Path) -> Iterator[svc.ServiceInfo]:
    """SeaweedFS with its S3 gateway and an empty `mesial` bucket."""
    yield from _run_service(svc.SeaweedFSService, services_dir)


@pytest.fixture(scope="session")
def k8s_tools() -> dict[str, Path]:
    """kubectl and helm, installed by `make install` into .tools/bin."""
    tools = {}
    for name in ("kubectl", "helm"):
        path = ROOT / ".tools" / "bin" / name
        found = path if path.is_file() else shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is missing: run `make install`")
        tools[name] = Path(found)
    return tools


@pytest.fixture(scope="session")
def service_settings(openbao: svc.ServiceInfo, seaweedfs: svc.ServiceInfo) -> Settings:
    """Settings pointing at the real OpenBao and S3 server of this run."""
    return Settings(
        vault=VaultSettings(addr=openbao.url, token=openbao.credentials["root_token"], backoff_s=0.05),
        store=StoreSettings(
            endpoint_url=seaweedfs.url,
            access_key=seaweedfs.credentials["access_key"],
            secret_key=seaweedfs.credentials["secret_key"],
            bucket=seaweedfs.credentials["bucket"],
        ),
    )
