"""Fixtures of the API tests: the real app on SQLite and on PostgreSQL, with OpenBao and SeaweedFS.

One app per database backend is started per session (lifespan entered once); tests
isolate themselves by creating their own organizations. ``Harness`` holds the client
and the helpers that every test uses to get credentials and data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from mesial.api.app import create_app, db_context
from mesial.api.executor import Dispatcher
from mesial.api.models import AuditEventRow
from mesial.api.services import orgs
from mesial.api.types import Role
from mesial.common.settings import ApiSettings, Settings
from tests.api import meshes

HERE = Path(__file__).resolve().parent


def make_settings(base: Settings, data_dir: Path, database_url: str, **api: Any) -> Settings:
    defaults: dict[str, Any] = {
        "job_command": [sys.executable, str(HERE / "jobscript.py")],
        "checkpoint_interval_s": 0,
        # a local-mode app sweeps retention right after it starts: not the shared database of every test
        "retention_interval_s": 0,
        "rate_per_key_per_min": 100_000,
        "rate_per_ip_per_min": 100_000,
        "rate_auth_per_ip_per_min": 10_000,
        "job_poll_s": 0.1,
        "executor_workers": 2,
        "max_upload_bytes": 4 << 20,
        # Apps of one run share a database: only the test of recovery lets an app adopt jobs.
        "executor_recover_on_start": False,
    }
    defaults.update(api)
    return base.model_copy(update={"data_dir": data_dir, "database_url": database_url, "api": ApiSettings(**defaults)})


class Harness:
    def __init__(self, app: Starlette, client: httpx.AsyncClient, backend: str) -> None:
        self.app = app
        self.client = client
        self.backend = backend
        self._platform: str | None = None

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def platform_key(self) -> str:
        if self._platform is None:
            with db_context(self.app):
                _, self._platform = await orgs.issue_member_key(None, Role.platform_admin, None)
        return self._platform

    async def new_org(self) -> tuple[str, str]:
        """A fresh organization (through the API) and the key of its first org-admin."""
        name = f"org-{secrets.token_hex(4)}"
        auth = {"authorization": f"Bearer {await self.platform_key()}"}
        response = await self.client.post("/v1/orgs", json={"name": name}, headers=auth)
        assert response.status_code == 201, response.text
        response = await self.client.post(f"/v1/orgs/{name}/keys", json={"role": "org-admin"}, headers=auth)
        assert response.status_code == 201, response.text
        return name, response.json()["key"]

    async def key(self, admin_key: str, role: str) -> str:
        response = await self.client.post("/v1/keys", json={"role": role}, headers=bearer(admin_key))
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    async def upload(self, key: str, kind: str = "upper", data: bytes | None = None) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/scans",
            params={"kind": kind},
            content=data
            if data is not None
            else meshes.arch_stl()
            if kind in ("upper", "lower")
            else meshes.stl_binary(),
            headers={**bearer(key), "content-type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def case(self, key: str) -> dict[str, str]:
        """Upper, lower and one bite scan of the caller."""
        return {kind: (await self.upload(key, kind))["id"] for kind in ("upper", "lower", "bite")}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _started(settings: Settings, backend: str) -> AsyncIterator[Harness]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver", timeout=60) as client:
            yield Harness(app, client, backend)


# tortoise-orm binds its models to one SQL dialect per process: a pytest process runs the
# app on one backend. PostgreSQL by default; `test_sqlite_backend.py` reruns the backend
# suites in a subprocess with MESIAL_TEST_API_DB=sqlite.
BACKEND = os.environ.get("MESIAL_TEST_API_DB", "postgres")


@pytest.fixture(scope="session")
async def api_session(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    if BACKEND == "sqlite":
        url = f"sqlite://{tmp_path_factory.mktemp('db') / 'api.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres").url
    settings = make_settings(service_settings, tmp_path_factory.mktemp("data"), url)
    async for harness in _started(settings, BACKEND):
        yield harness


@pytest.fixture
def api(api_session: Harness) -> Harness:
    """The app on this run's database backend."""
    return api_session


@pytest.fixture
def pg(api_session: Harness) -> Harness:
    """The app on PostgreSQL only (tests of PostgreSQL-specific behaviour)."""
    if api_session.backend != "postgres":
        pytest.skip("PostgreSQL-only test; this run uses " + api_session.backend)
    return api_session


def variant(api: Harness, data_dir: Path, **overrides: Any) -> contextlib.AbstractAsyncContextManager[Harness]:
    """A second app on the same database and services, with some API settings changed."""
    return variant_of(api, data_dir, {}, **overrides)


@contextlib.asynccontextmanager
async def variant_of(
    api: Harness, data_dir: Path, update: dict[str, Any], dispatcher: Dispatcher | None = None, **overrides: Any
) -> AsyncIterator[Harness]:
    """:func:`variant` with whole sections of the settings replaced too (``update``, e.g. ``{"operator": ...}``),
    and jobs handed to ``dispatcher`` if given (e.g. a :class:`~mesial.api.executor.ClusterDispatcher`)."""
    base = api.runtime.settings
    settings = make_settings(base, data_dir, base.database_url, **overrides).model_copy(update=update)
    app = create_app(settings, dispatcher=dispatcher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            harness = Harness(app, client, api.backend)
            harness._platform = await api.platform_key()
            yield harness


@contextlib.contextmanager
def refusing(action: str, tenant: str | None = None) -> Iterator[None]:
    """Inside, the audit chain's insert fails for ``action``'s events (of ``tenant`` if given), as a
    database that cannot write them would, in the transaction of the append: every other event is
    written as usual."""
    insert = AuditEventRow.create

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") == action and tenant in (None, kwargs.get("tenant")):
            raise ConnectionError("audit table unwritable")
        return await insert(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(AuditEventRow, "create", failing)
        yield


ISSUER = "https://idp.example.test/realms/mesial"
AUDIENCE = "mesial-api"


@pytest.fixture
async def idp(api: Harness, tmp_path: Path) -> AsyncIterator[tuple[Harness, Any]]:
    """A second app trusting an OIDC issuer (``ISSUER``, ``AUDIENCE``; its JWKS a file) and that
    issuer's RS256 signing key (``kid`` ``k1``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    settings = {"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks": str(jwks)}
    async with variant(api, tmp_path / "data", **settings) as harness:
        yield harness, key
