"""kopf handlers: thin adapters over ``operator.sync``."""

from __future__ import annotations

from typing import cast

import kopf

from mesial.operator.errors import to_kopf
from mesial.operator.runtime import Runtime


async def current(runtime: Runtime, api: tuple[str, str], body: kopf.Body) -> kopf.Body | None:
    """``body``'s object as the API server has it now; None once it is gone.

    kopf hands a handler the body its watch stream last delivered for the object, which lags
    behind the server while that stream or the object's event queue lags (a busy server or
    operator): the status the previous tick of a timer wrote may not be in it yet. A handler that
    decides from status, or writes status computed from it, reads the object here: a decision on
    the lagging body undoes what the operator wrote last (a sweep run again, a receipt owed dropped).

    The one rule for every handler that reads its object here: gone (404, though kopf's copy still
    shows it) is None, and the handler ends without acting on kopf's copy (there is nothing left to
    act on or write to; kopf stops once its watch says so); a failed read is a kopf error
    (``errors.to_kopf``: temporary or permanent, retried after the configured delay)."""
    meta = body["metadata"]
    try:
        obj = await runtime.k8s.get(*api, meta["name"], meta.get("namespace"))
    except Exception as exc:
        raise to_kopf(exc, runtime.settings.operator.retry_delay_s) from exc
    return None if obj is None else kopf.Body(cast(kopf.RawBody, obj))
