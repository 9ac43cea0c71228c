"""Picking and grouping rows: subject or reference rows, by a key, and their worst status and margin."""
from __future__ import annotations

import math
from collections import defaultdict

from .rows import Row

SEVERITY = ("error", "fail", "xpass", "xfail", "pass", "n/a")
FINDING = ("fail", "xfail", "xpass", "error")


def worst(rows: list[Row]) -> str:
    """The worst status of ``rows``, with its count unless it is pass or n/a."""
    statuses = {r.status for r in rows}
    for s in SEVERITY:
        if s in statuses:
            counts = sum(r.status == s for r in rows)
            return f"{s} ({counts}/{len(rows)})" if s not in ("pass", "n/a") else s
    return "-"


def worst_status(rows: list[Row]) -> str | None:
    statuses = {r.status for r in rows}
    return next((s for s in SEVERITY if s in statuses), None)


def max_margin(rows: list[Row]) -> tuple[float | None, Row | None]:
    judged = [r for r in rows if r.margin is not None]
    if not judged:
        return None, None
    r = max(judged, key=lambda r: (r.margin if not math.isnan(r.margin) else math.inf))
    return r.margin, r


def subject_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if getattr(r, "about", "subject") != "reference"]


def reference_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if getattr(r, "about", "subject") == "reference"]


def group_by(rows, key) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def uniq(xs) -> list:
    return list(dict.fromkeys(xs))
