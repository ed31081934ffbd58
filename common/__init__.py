"""What two or more Mesial components share: settings, errors, Vault keys, envelope
encryption, the object store, and the real-service manager used by local mode and tests."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mesial")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
