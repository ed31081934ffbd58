"""What two or more Mesial components share: settings, errors, Vault keys, envelope
encryption, the object store, and the real-service manager used by local mode and tests."""

import os
import sys


def installed_version() -> str:
    """The installed distribution's version: ``project.version`` of pyproject.toml (the one source of truth).

    Read from the first ``mesial-*.dist-info/METADATA`` along ``sys.path``, where
    :func:`importlib.metadata.version` finds it too, without importing :mod:`importlib.metadata`
    (its e-mail header parser costs 30-50 ms of CPU at every start of the ``mesial`` command). With
    no such file or no version in its headers, :mod:`importlib.metadata` answers; ``0.0.0+unknown`` for a
    tree that was never installed.
    """
    metadata = _first_dist_info()
    if metadata is not None:
        try:
            with open(metadata, encoding="utf-8") as lines:
                for line in lines:
                    if line.startswith("Version:"):
                        return line[len("Version:") :].strip()
                    if not line.strip():  # the end of the headers
                        break
        except OSError:
            pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mesial") or "0.0.0+unknown"
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "0.0.0+unknown"


def _first_dist_info() -> str | None:
    """The METADATA file of the first ``mesial-*.dist-info`` along ``sys.path``, or None (none, or an
    egg-info first)."""
    for entry in sys.path:
        folder = entry or "."
        try:
            names = sorted(os.listdir(folder))
        except OSError:  # a zip file, a path hook's name, a folder that went away
            continue
        for name in names:
            if name.startswith("mesial-") and name.endswith(".dist-info"):
                return os.path.join(folder, name, "METADATA")
            if name.endswith(".egg-info") and name.startswith(("mesial-", "mesial.")):
                return None  # an egg-info install first on the path: importlib.metadata reads it
    return None


__version__ = installed_version()

__all__ = ["__version__", "installed_version"]
