"""Vault and the object store behind TLS signed by a private CA: honoured when configured, refused when not.

The chart mounts ``vault.caSecret`` and ``store.caSecret`` and points ``MESIAL_VAULT__CA_CERT`` and
``MESIAL_STORE__CA_CERT`` at them (``test_chart.py`` checks the rendering); here the clients that
read those settings talk to the real OpenBao and SeaweedFS through a TLS proxy whose certificate
no system bundle trusts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesial.common.errors import MesialError
from mesial.common.objectstore import ObjectStore
from mesial.common.settings import Settings
from mesial.common.vault import TenantKeys
from tests.chart.tls import PrivateCA, TlsProxy, make_private_ca

ORG = f"tls-ca-{os.getpid() % 10000:04d}"


@pytest.fixture
def private_ca(tmp_path: Path) -> PrivateCA:
    return make_private_ca(tmp_path)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


@pytest.fixture
def tls_services(private_ca: PrivateCA, openbao: Any, seaweedfs: Any) -> Iterator[tuple[str, str]]:
    with TlsProxy(private_ca, _port(openbao.url)) as vault, TlsProxy(private_ca, _port(seaweedfs.url)) as store:
        yield vault.url, store.url


def _settings(base: Settings, vault_url: str, store_url: str, ca: Path | None) -> Settings:
    return base.model_copy(
        update={
            "vault": base.vault.model_copy(update={"addr": vault_url, "ca_cert": ca, "max_attempts": 1}),
            "store": base.store.model_copy(update={"endpoint_url": store_url, "ca_cert": ca, "max_attempts": 1}),
        }
    )


async def test_store_and_vault_trust_the_configured_private_ca(
    service_settings: Settings, tls_services: tuple[str, str], private_ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    settings = _settings(service_settings, *tls_services, private_ca.ca_cert)
    keys = TenantKeys(settings.vault)
    keys.ensure_transit()
    keys.ensure_key(ORG)
    async with ObjectStore(settings.store, keys) as store:
        await store.put(ORG, "scans/s1", b"an upper arch")
        assert await store.read_bytes(ORG, "scans/s1") == b"an upper arch"
        await store.delete(ORG, "scans/s1")


async def test_without_the_ca_both_refuse_the_certificate(
    service_settings: Settings, tls_services: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    settings = _settings(service_settings, *tls_services, None)
    keys = TenantKeys(settings.vault)
    with pytest.raises(MesialError, match="SSLError"):
        keys.ensure_transit()
    trusted = TenantKeys(service_settings.vault)  # plain http, to reach the store's own check
    async with ObjectStore(settings.store, trusted) as store:
        with pytest.raises(MesialError, match=r"TLS failed.*CERTIFICATE_VERIFY_FAILED"):
            await store.put(ORG, "scans/s2", b"x")
