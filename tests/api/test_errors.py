"""Every domain error has an HTTP mapping, and mapped bodies never echo internals."""

from __future__ import annotations

import inspect

from mesial.api import errors as api_errors
from mesial.common import errors as domain


def _domain_classes() -> list[type[domain.MesialError]]:
    return [
        value
        for value in vars(domain).values()
        if inspect.isclass(value) and issubclass(value, domain.MesialError) and value.__module__ == domain.__name__
    ]


def test_every_domain_error_has_an_http_mapping() -> None:
    missing = [klass.__name__ for klass in _domain_classes() if klass not in api_errors.DOMAIN_MAP]
    assert missing == [], f"add these to api/errors.py DOMAIN_MAP: {missing}"


def test_mapped_bodies_use_fixed_messages() -> None:
    status, body, _ = api_errors.describe(domain.ObjectNotFound("tenants/secret-lab/scans/x"))
    assert status == 404 and "secret-lab" not in body["message"]
    status, body, _ = api_errors.describe(domain.VaultUnavailable("Vault at http://10.0.0.1:8200 ..."))
    assert status == 503 and "10.0.0.1" not in body["message"]
    status, body, _ = api_errors.describe(ValueError("anything"))
    assert (status, body["code"]) == (500, "internal")
    status, body, headers = api_errors.describe(api_errors.RateLimited(7))
    assert (status, headers) == (429, {"Retry-After": "7"})
