"""Filters: {"key": value} or {"key": [v1, v2]} (any of), matched exactly against chunk.metadata[key]
(a list-valued metadata field such as `acl` matches when any element does) or against the columns
doc_id, chunk_id, source, title. They compile to SQL, so they are applied inside the search.
"""

from __future__ import annotations

import json
import math
from typing import Any

from retrieval.errors import RetrievalError

COLUMNS = ("doc_id", "chunk_id", "source", "title")
_SCALARS = (str, int, float, bool)
_INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores as an integer; a larger int cannot even be bound


def _scalar_problem(v: Any) -> str | None:
    """Why a filter value cannot be matched (None when it can): it must be a value SQLite can bind."""
    if not isinstance(v, _SCALARS):
        return "must be a string, number or bool (or a list of them)"
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number"
    if isinstance(v, int) and not isinstance(v, bool) and not _INT64[0] <= v <= _INT64[1]:
        return f"is outside the 64-bit integer range ({_INT64[0]} to {_INT64[1]})"
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text (it holds a lone surrogate)"
    return None


def normalize_filter(flt: dict | None) -> dict[str, list]:
    """Validate a filter dict; every value becomes a non-empty list of scalars."""
    if flt is None:
        return {}
    if not isinstance(flt, dict):
        raise RetrievalError(f"filter must be a dict like {{'tenant': 'acme'}}, got {flt!r}")
    out: dict[str, list] = {}
    for key, val in flt.items():
        if not isinstance(key, str) or not key.strip() or _scalar_problem(key):
            raise RetrievalError(f"filter key {key!r} must be a non-empty string of valid Unicode text")
        vals = list(val) if isinstance(val, (list, tuple, set)) else [val]
        if not vals:
            raise RetrievalError(f"filter {key!r} has an empty list of values; give at least one")
        for v in vals:
            problem = _scalar_problem(v)
            if problem:
                raise RetrievalError(f"filter {key!r}: value {v!r} {problem}")
        out[key] = vals
    return out


def parse_filter_args(items: list[str] | None) -> dict[str, Any]:
    """CLI `--filter key=value` (repeatable; a repeated key means any of). Values are JSON when they
    parse as a number/bool, else strings."""
    out: dict[str, list] = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise RetrievalError(f"bad filter expression {item!r}: use key=value, e.g. --filter tenant=acme")
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
            if not isinstance(val, (int, float, bool)):
                val = raw
        except json.JSONDecodeError:
            val = raw
        out.setdefault(key.strip(), []).append(val)
    return {k: (v[0] if len(v) == 1 else v) for k, v in out.items()}


def filter_sql(flt: dict[str, list], alias: str = "c") -> tuple[str, list]:
    """(WHERE fragment, params) for a normalised filter; ("1", []) when empty."""
    parts, params = [], []
    for key, vals in flt.items():
        marks = ",".join("?" * len(vals))
        if key in COLUMNS:
            parts.append(f"{alias}.{key} IN ({marks})")
        else:
            path = "$." + json.dumps(key)  # quoted JSON path: keys with dots or spaces work
            parts.append(f"EXISTS (SELECT 1 FROM json_each({alias}.metadata, ?) j WHERE j.value IN ({marks}))")
            params.append(path)
        params.extend(int(v) if isinstance(v, bool) else v for v in vals)
    return (" AND ".join(parts) or "1"), params


def matches(chunk_meta: dict, chunk_cols: dict, flt: dict[str, list]) -> bool:
    """The same predicate in Python (used where SQL is not at hand, e.g. merging shard results)."""
    for key, vals in flt.items():
        have = chunk_cols.get(key) if key in COLUMNS else chunk_meta.get(key)
        items = have if isinstance(have, list) else [have]
        if not any(h == v for h in items for v in vals):
            return False
    return True
