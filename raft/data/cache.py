"""Content-addressed cache of teacher outputs (SQLite in OUT/.cache), so a killed build resumes for free.

The key hashes everything that determines a teacher call - the task, the chunk text(s), the rendered
prompt, the teacher model and its sampling parameters, the attempt number - so changing one parameter
invalidates exactly the calls it touches. Only successful responses are stored: a request that failed
(timeout, 5xx) is asked again on the next run. Writes are committed in small groups (every 0.2 s or 256
rows, WAL): a per-row commit cost more CPU than the HTTP request itself at 300 requests/s, and `kill -9`
then loses at most the last 0.2 s of responses, which the next run simply asks for again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TeacherCache:
    """get/put JSON values by key; `hits` and `misses` count lookups for the summary."""

    def __init__(self, path: str | Path | None, commit_every_s: float = 0.2, commit_rows: int = 256):
        self.path = Path(path) if path else None
        self.hits = 0
        self.misses = 0
        self._pending = 0
        self._last_commit = time.monotonic()
        self._every, self._rows = commit_every_s, commit_rows
        if self.path is None:
            self._db = sqlite3.connect(":memory:")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS teacher (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM teacher WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        if self._pending == 0 and not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute("INSERT OR REPLACE INTO teacher (key, value) VALUES (?, ?)",
                         (key, json.dumps(value, ensure_ascii=False)))
        self._pending += 1
        now = time.monotonic()
        if self._pending >= self._rows or now - self._last_commit >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._pending = 0
        self._last_commit = time.monotonic()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM teacher").fetchone()[0]

    def close(self) -> None:
        self.flush()
        self._db.close()
