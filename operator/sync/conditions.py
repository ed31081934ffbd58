"""Status conditions with stable transition times (a condition keeps its time until it flips)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": type_, "status": status, "reason": reason, "message": message[:1024]}


def merge_conditions(old: list[dict[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` conditions, keeping ``lastTransitionTime`` of those whose status did not change."""
    previous = {c.get("type"): c for c in old or []}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        if before and before.get("status") == cond["status"] and before.get("lastTransitionTime"):
            merged.append({**cond, "lastTransitionTime": before["lastTransitionTime"]})
        else:
            merged.append({**cond, "lastTransitionTime": now_iso()})
    return merged


def same_status(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` would change anything but transition times."""

    def strip(status: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k != "conditions"}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
        ]
        return out

    return strip({k: old.get(k) for k in new}) == strip(new)
