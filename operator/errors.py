"""Domain errors become kopf's retry decisions here, and only here.

``TemporaryError``: the world may change (a service comes back, a policy is fixed);
kopf retries after the delay. ``PermanentError``: retrying the same input cannot help;
the handler gives up and the status says why. Every :class:`MesialError` subclass is
in :data:`RETRY`; ``tests/operator/test_errors.py`` fails if one is missing.
"""

from __future__ import annotations

import kopf

from mesial.common import errors
from mesial.operator.k8s import K8sError

# True: temporary (retry with the delay times the factor); False: permanent.
RETRY: dict[type[errors.MesialError], tuple[bool, float]] = {
    errors.MesialError: (True, 1.0),
    errors.ConfigurationError: (False, 0.0),
    errors.ServiceError: (True, 1.0),
    errors.ServiceStartError: (True, 1.0),
    errors.VaultError: (True, 1.0),
    errors.VaultUnavailable: (True, 1.0),
    errors.KeyNotFound: (True, 1.0),
    errors.KeyAccessDenied: (True, 4.0),
    errors.CryptoError: (False, 0.0),
    errors.UnsupportedFormat: (False, 0.0),
    errors.IntegrityError: (False, 0.0),
    errors.StorageError: (True, 1.0),
    errors.StoreUnavailable: (True, 1.0),
    errors.ObjectNotFound: (True, 1.0),
    errors.InvalidObjectKey: (False, 0.0),
    errors.LegalHoldActive: (True, 4.0),
    errors.InputError: (False, 0.0),
    # a scan refused before any work: the same file fails the same way every time
    errors.ScanInputError: (False, 0.0),
    errors.UnsupportedScanFormat: (False, 0.0),
    errors.CorruptScan: (False, 0.0),
    errors.EmptyScan: (False, 0.0),
    errors.ScanTooLarge: (False, 0.0),
    errors.ImplausibleScale: (False, 0.0),
    errors.NotADentalArch: (False, 0.0),
}


def to_kopf(exc: BaseException, delay: float) -> kopf.TemporaryError | kopf.PermanentError:
    """The kopf error that says whether ``exc`` is worth a retry, and when."""
    message = describe(exc)
    if isinstance(exc, K8sError):
        if exc.transient or exc.status in (403, 404, 409):
            return kopf.TemporaryError(message, delay=delay)
        return kopf.PermanentError(message)
    if isinstance(exc, errors.MesialError):
        for cls in type(exc).__mro__:
            if cls in RETRY:
                temporary, factor = RETRY[cls]
                if temporary:
                    return kopf.TemporaryError(message, delay=delay * factor)
                return kopf.PermanentError(message)
    return kopf.TemporaryError(message, delay=delay)


def describe(exc: BaseException) -> str:
    """One line for a status message or an Event: the error's type and text, bounded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:400]
