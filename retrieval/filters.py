"""Filters: {"key": value} or {"key": [v1, v2]} (any of), matched exactly against chunk.metadata[key]
(a list-valued metadata field such as `acl` matches when any element does) or against the columns
doc_id, chunk_id, source, title. Every key must match.

One set of rules, two forms of it: `filter_sql` compiles a normalised filter to SQL, so the index applies
it inside the search; `matches` is the same predicate on a Chunk in Python, for whatever has no SQL at
hand (the in-memory test retriever, serving/testing/memory_retriever.py). tests/retrieval/test_filters.py
runs one table of filters against both and asserts the same hits.

The rules in detail (what SQLite does, and so what `matches` does):
- a column compares as text: a number in the filter matches its text form (doc_id "7" matches 7; a
  bool is 1 or 0);
- metadata[key] yields its elements when it is a list, its values when it is an object, else itself; a
  nested list or object is compared as its compact JSON text; null never matches;
- a metadata value compares with a filter value of the same kind: numbers by value (1 == 1.0, and a
  bool is the number 1 or 0), strings exactly (case and Unicode form included); a number never
  matches a string.
"""

from __future__ import annotations

import json
import math
import sqlite3
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
        elif '"' not in key:
            # a quoted JSON path (keys with dots or spaces work). SQLite compares the label with the key as
            # stored, so it is escaped as the store writes metadata (store.metadata_json: non-ASCII raw)
            path = "$." + json.dumps(key, ensure_ascii=False)
            parts.append(f"EXISTS (SELECT 1 FROM json_each({alias}.metadata, ?) j WHERE j.value IN ({marks}))")
            params.append(path)
        else:
            # a path label cannot hold a double quote: find the key among the object's members instead
            # (same result, slower: every member of every row is read); a scalar is wrapped in an array
            # so that j walks elements, values or the scalar itself, as json_each on a path does
            parts.append(f"EXISTS (SELECT 1 FROM json_each({alias}.metadata) m, json_each(CASE WHEN m.type IN "
                         f"('array', 'object') THEN m.value ELSE json_array(m.value) END) j "
                         f"WHERE m.key = ? AND j.value IN ({marks}))")
            params.append(key)
        params.extend(int(v) if isinstance(v, bool) else v for v in vals)
    return (" AND ".join(parts) or "1"), params


def matches(chunk: Any, flt: dict[str, list]) -> bool:
    """`filter_sql`'s predicate in Python, for a normalised filter (`normalize_filter`) and a Chunk (or
    anything with its attributes) whose metadata is JSON-shaped, as the store reads it back (see
    `stored_metadata`)."""
    for key, vals in flt.items():
        if key in COLUMNS:
            have = getattr(chunk, key, None)
            if not any(have == _column_text(v) for v in vals):
                return False
        else:
            items = list(_json_each((chunk.metadata or {}).get(key)))
            if not any(_same_value(h, v) for h in items for v in vals):
                return False
    return True


def stored_metadata(metadata: dict) -> dict:
    """Metadata as a search returns it: through the store's JSON (tuples become lists, other types their
    str(); refused as the store refuses it)."""
    from retrieval.store import metadata_json

    return json.loads(metadata_json(metadata))


def _json_each(value: Any):
    """What SQLite's json_each yields as `value` for metadata[key]."""
    if value is None:
        return
    for v in value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]:
        if isinstance(v, (dict, list)):
            yield json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        elif v is not None:
            yield v


def _same_value(have: Any, want: Any) -> bool:
    """SQLite's = between a JSON value and a bound filter value: numbers (bools are 1/0) by value, text
    exactly, never a number and a string."""
    if isinstance(have, str) or isinstance(want, str):
        return isinstance(have, str) and isinstance(want, str) and have == want
    return have == want


def _column_text(v: Any) -> str:
    """A filter value as SQLite compares it with a TEXT column (the column's affinity converts it)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or isinstance(v, int):
        return str(int(v))
    con = sqlite3.connect(":memory:")  # a float's text form is SQLite's own ("1.0e+20"), so ask it
    try:
        return con.execute("SELECT CAST(? AS TEXT)", (v,)).fetchone()[0]
    finally:
        con.close()
