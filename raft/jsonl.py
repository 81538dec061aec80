"""Read a JSONL file of objects, naming the file and line of anything that is not one.

One reader so every command reports a broken line the same way; callers keep their own field checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from raft.errors import RaftError


def iter_jsonl(path: str | Path, error_cls: type[Exception] = RaftError) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line; `error_cls` for a line that is not a JSON object.

    Lines are split on "\\n" only (bytes, not str.splitlines), so a U+2028 written raw by
    json.dumps(ensure_ascii=False) inside a string stays in its line; decoding per line lets a
    non-UTF-8 byte be reported with its line number too.
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error_cls(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start + 1}); "
                                "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error_cls(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); each line must be "
                                "one JSON object: fix or remove that line") from None
            if not isinstance(obj, dict):
                raise error_cls(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}; "
                                "each line must be one JSON object")
            yield n, obj
