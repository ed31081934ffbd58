"""Tenant identifiers and the names derived from them, validated in one place.

An Organization's name is the root of every per-tenant name: its namespace
``mesial-org-<name>``, its Vault transit key (named as the namespace: the aligner Jobs' one Vault
policy finds the key from the namespace of the Job's ServiceAccount) and its object prefix
``tenants/<name>/``. A name that could escape one of those (``..``, ``/``, upper case,
over-long) is refused here, before any service sees it.
"""

from __future__ import annotations

import re

from mesial.common.errors import InputError, InvalidObjectKey

# A DNS label short enough that "mesial-org-" + name is still one (63 characters).
ORG_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
# Object keys below a tenant's prefix: path segments of safe characters, no dot-only segment.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_OBJECT_KEY_LEN = 512
TENANTS_PREFIX = "tenants/"


def validate_org_name(name: str) -> str:
    """Return ``name`` if it is a valid Organization name, else raise ``InputError``."""
    if not isinstance(name, str) or not ORG_NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid organization name {name!r}: 1-52 lower-case letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def namespace_for(org: str) -> str:
    """The tenant namespace of an Organization."""
    return f"mesial-org-{validate_org_name(org)}"


def transit_key_for(org: str) -> str:
    """The Vault transit key name of an Organization: its namespace's name.

    The aligner Jobs' Vault policy (``charts/mesial/files/vault/aligner-policy.hcl``) is one policy
    for every tenant, templated on the namespace of the Job's ServiceAccount: that namespace must
    be the key's name.
    """
    return namespace_for(org)


def tenant_prefix(org: str) -> str:
    """The object-store prefix every object of an Organization lives under (ends in '/')."""
    return f"{TENANTS_PREFIX}{validate_org_name(org)}/"


def object_key_for(org: str, relative: str) -> str:
    """The full object key of ``relative`` under the tenant's prefix.

    ``relative`` is a path such as ``scans/<id>``: segments of letters, digits, ``._-``,
    never empty, never ``.``/``..``, not absolute, not another tenant's prefix.
    """
    validate_relative_key(relative)
    return tenant_prefix(org) + relative


def validate_relative_key(relative: str, *, allow_prefix: bool = False) -> str:
    """Check a key below a tenant prefix; ``allow_prefix`` accepts a trailing '/' (listing)."""
    if not isinstance(relative, str) or not relative:
        raise InvalidObjectKey("object key is empty")
    if len(relative) > MAX_OBJECT_KEY_LEN:
        raise InvalidObjectKey(f"object key longer than {MAX_OBJECT_KEY_LEN} characters")
    if relative.startswith("/"):
        raise InvalidObjectKey(f"object key {relative!r} is absolute")
    if relative.startswith(TENANTS_PREFIX):
        raise InvalidObjectKey(f"object key {relative!r} names a tenant prefix: give the key below it")
    body = relative[:-1] if allow_prefix and relative.endswith("/") else relative
    for segment in body.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT_RE.fullmatch(segment):
            raise InvalidObjectKey(f"object key {relative!r} has an invalid segment {segment!r}")
    return relative
