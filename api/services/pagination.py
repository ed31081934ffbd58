"""Keyset pagination by (created_at, id): stable under inserts, opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from tortoise.expressions import Q

from mesial.api.errors import ValidationFailed
from mesial.api.services.scope import OPAQUE_ID_RE
from mesial.api.types import iso


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([iso(created_at), row_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor's (time, id); anything this API did not write (a NUL, a long id, a naive time) is 422.

    The cursor is client text: it must not reach the database in a shape its columns refuse."""
    try:
        created, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except (ValueError, TypeError, binascii.Error):
        raise ValidationFailed("invalid cursor") from None
    if when.tzinfo is None or not isinstance(row_id, str) or not OPAQUE_ID_RE.fullmatch(row_id):
        raise ValidationFailed("invalid cursor")
    return when, row_id


async def page(query: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.filter(Q(created_at__gt=created) | Q(created_at=created, id__gt=row_id))
    rows = await query.order_by("created_at", "id").limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
