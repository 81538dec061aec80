"""SQLite document store of one segment: chunk text and metadata by integer row (the FAISS id, unique across
the index's segments). A segment's store is written once and then only read; BM25 lives beside it
(retrieval/sparse.py), and filters are SQL over its metadata (retrieval/filters.py).

Each thread reads through its own connection, so one thread's long query never makes another thread's
search wait (SQLite serves many readers of one file at once). A thread may bound its queries with
`deadline()`.

A committed segment's store is opened read-only, and one connection is opened at once, while the file is surely
there: a merge (in this process or another) may delete the file while a snapshot still searches the segment,
and a thread that has no connection yet then reads through that first one (it keeps the deleted file open, as
Lucene's readers do), where connecting by path would create an empty database in the file's place.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.filters import filter_sql
from retrieval.types import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
  row INTEGER PRIMARY KEY,
  chunk_id TEXT NOT NULL,
  doc_id TEXT NOT NULL,
  title TEXT NOT NULL DEFAULT '',
  text TEXT NOT NULL,
  source TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}',
  h TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_cid ON chunks(chunk_id);
"""
# SQLite calls the deadline check every this many VM instructions (~1 ms of work): cheap, and prompt.
_PROGRESS_STEPS = 10_000

_deadline = threading.local()


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Queries this thread runs inside the block stop once time.monotonic() passes `at`, raising
    TimeoutError: a search whose caller has given up stops consuming the index."""
    prev = getattr(_deadline, "at", None)
    _deadline.at = at
    try:
        yield
    except sqlite3.OperationalError as e:
        if _interrupted(e):
            raise TimeoutError("the search passed its deadline and was stopped") from None
        raise
    finally:
        _deadline.at = prev


def _past_deadline() -> int:
    """SQLite progress handler: non-zero interrupts the running statement. A plain function, not a
    method: a connection holding a bound method would keep its Store alive in a reference cycle."""
    at = getattr(_deadline, "at", None)
    return 1 if at is not None and time.monotonic() > at else 0


def _interrupted(e: sqlite3.OperationalError) -> bool:
    return "interrupt" in str(e) and _past_deadline() == 1


def metadata_json(metadata: Any, doc_id: str = "") -> str:
    """Metadata as strict JSON. NaN, Infinity and numbers beyond float range (1e400) are refused: SQLite
    cannot read them back (every filtered search would fail on that row with 'malformed JSON')."""
    where = f" of document {doc_id!r}" if doc_id else ""
    if not isinstance(metadata, dict):
        raise RetrievalError(f"metadata{where} must be a JSON object, got {type(metadata).__name__}")
    bad = _non_finite(metadata, "metadata")
    if bad:
        raise RetrievalError(f"{bad[0]}{where} is {bad[1]!r}; metadata numbers must be finite "
                             "(no NaN, Infinity or values beyond 1.8e308)")
    try:
        return json.dumps(metadata, ensure_ascii=False, default=str, allow_nan=False)
    except (ValueError, RecursionError) as e:
        raise RetrievalError(f"metadata{where} cannot be stored as JSON: {e}") from None


def _non_finite(value: Any, path: str) -> tuple[str, Any] | None:
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return p, v
        if isinstance(v, dict):
            stack.extend((x, f"{p}.{k}") for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
    return None


class Store:
    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        self.lock = threading.RLock()  # writes, and the term-count memo they invalidate
        self._local = threading.local()
        self._cons: list[sqlite3.Connection] = []
        self._closed = False
        self._pins = 0  # searches reading this store now (see pin/retire)
        self._retired = False
        self._create = create
        self._first: sqlite3.Connection | None = None
        if create:
            self.con.executescript(SCHEMA)
            self.con.commit()
        else:
            try:
                self._first = self.con
            except sqlite3.OperationalError as e:  # swept by a merge since the manifest was read, or never there
                raise RetrievalError(f"segment store {str(self.path)!r} cannot be opened ({e})") from None

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection to the store (opened on first use)."""
        con = getattr(self._local, "con", None)
        if con is None:
            with self.lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                try:
                    con = self._connect()
                except sqlite3.OperationalError:
                    if self._first is None:
                        raise
                    # the file is gone (a merge swept it): the first connection still reads it. SQLite serialises
                    # the threads that share it, and only a retired segment's last searches get here
                    con = self._first
                else:
                    self._cons.append(con)
            self._local.con = con
        return con

    def _connect(self) -> sqlite3.Connection:
        if self._create:
            con = sqlite3.connect(str(self.path), check_same_thread=False)
        else:  # read-only, and never creates a file
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        con.set_progress_handler(_past_deadline, _PROGRESS_STEPS)
        return con

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for con in self._cons:
                con.close()

    def pin(self) -> None:
        """A search starts reading this store: a retire() meanwhile leaves it open until unpin()."""
        with self.lock:
            self._pins += 1

    def unpin(self) -> None:
        with self.lock:
            self._pins -= 1
            if self._retired and self._pins == 0:
                self.close()

    def retire(self) -> None:
        """A newer generation replaced this store: close it once no search reads it. (Left to the
        garbage collector, its connections would keep the deleted file open indefinitely: sqlite3
        connections sit in reference cycles.)"""
        with self.lock:
            self._retired = True
            if self._pins == 0:
                self.close()

    # ---- writes (only while the segment is being written) --------------------------------------
    def add_chunks(self, chunks: list[Chunk], hashes: list[str], rows) -> None:
        """Insert chunks under the given rows (ascending; the index assigns them)."""
        with self.lock, self.con:
            self.con.executemany(
                "INSERT INTO chunks (row, chunk_id, doc_id, title, text, source, metadata, h) VALUES (?,?,?,?,?,?,?,?)",
                [(int(r), c.chunk_id, c.doc_id, c.title or "", c.text, c.source or "", metadata_json(c.metadata, c.doc_id),
                  h) for r, c, h in zip(rows, chunks, hashes)])

    def copy_rows_from(self, src: "Store", keep: np.ndarray) -> None:
        """Copy the rows `keep` of another segment's store into this one (a merge)."""
        with self.lock, self.con:
            self.con.execute("ATTACH DATABASE ? AS src", (str(src.path),))
            try:
                self.con.execute("CREATE TEMP TABLE IF NOT EXISTS keep_rows (row INTEGER PRIMARY KEY)")
                self.con.execute("DELETE FROM temp.keep_rows")
                self.con.executemany("INSERT INTO temp.keep_rows VALUES (?)", [(int(r),) for r in keep])
                self.con.execute("INSERT INTO main.chunks SELECT s.* FROM src.chunks s JOIN temp.keep_rows k "
                                 "ON k.row = s.row")
            finally:
                self.con.commit()
                self.con.execute("DETACH DATABASE src")

    # ---- reads (this thread's connection, no lock: readers never wait for each other) -----------
    def count(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def rows_for_docs(self, doc_ids: list[str]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(doc_ids), 900):
            part = list(doc_ids[i:i + 900])
            q = f"SELECT row FROM chunks WHERE doc_id IN ({','.join('?' * len(part))}) ORDER BY row"
            out += [r for (r,) in self.con.execute(q, part)]
        return out

    def rows_matching(self, flt: dict[str, list]) -> np.ndarray:
        where, params = filter_sql(flt)
        rows = [r for (r,) in self.con.execute(f"SELECT c.row FROM chunks c WHERE {where}", params)]
        return np.asarray(rows, dtype="int64")

    def all_rows_and_hashes(self) -> tuple[np.ndarray, list[str]]:
        data = self.con.execute("SELECT row, h FROM chunks ORDER BY row").fetchall()
        return np.asarray([r for r, _ in data], dtype="int64"), [h for _, h in data]

    def hashes_for_rows(self, rows) -> dict[int, str]:
        out: dict[int, str] = {}
        rows = [int(r) for r in rows]
        for i in range(0, len(rows), 900):
            part = rows[i:i + 900]
            q = f"SELECT row, h FROM chunks WHERE row IN ({','.join('?' * len(part))})"
            out.update(self.con.execute(q, part).fetchall())
        return out

    def _rows_to_chunks(self, data) -> list[tuple[int, Chunk]]:
        return [(r, Chunk(chunk_id=cid, doc_id=did, title=t, text=x, source=s, metadata=json.loads(m)))
                for r, cid, did, t, x, s, m in data]

    def get_rows(self, rows) -> dict[int, Chunk]:
        rows = [int(r) for r in rows]
        out: dict[int, Chunk] = {}
        for i in range(0, len(rows), 900):
            part = rows[i:i + 900]
            q = (f"SELECT row, chunk_id, doc_id, title, text, source, metadata FROM chunks "
                 f"WHERE row IN ({','.join('?' * len(part))})")
            out.update(self._rows_to_chunks(self.con.execute(q, part).fetchall()))
        return out

    def get_chunk_ids(self, chunk_ids: list[str]) -> list[tuple[int, Chunk]]:
        out: list[tuple[int, Chunk]] = []
        for i in range(0, len(chunk_ids), 900):
            part = list(chunk_ids[i:i + 900])
            q = (f"SELECT row, chunk_id, doc_id, title, text, source, metadata FROM chunks "
                 f"WHERE chunk_id IN ({','.join('?' * len(part))})")
            out += self._rows_to_chunks(self.con.execute(q, part).fetchall())
        return out

    def chunks_for_doc(self, doc_id: str) -> list[tuple[int, Chunk]]:
        data = self.con.execute("SELECT row, chunk_id, doc_id, title, text, source, metadata FROM chunks "
                                "WHERE doc_id = ? ORDER BY row", (doc_id,)).fetchall()
        return self._rows_to_chunks(data)

    def chunk_ids(self) -> list[tuple[int, str]]:
        return self.con.execute("SELECT row, chunk_id FROM chunks ORDER BY row").fetchall()

    def doc_ids(self) -> list[tuple[int, str]]:
        return self.con.execute("SELECT row, doc_id FROM chunks").fetchall()

    def titles_and_texts(self) -> tuple[np.ndarray, list[str], list[str]]:
        """(rows ascending, titles, texts): what BM25 indexes."""
        data = self.con.execute("SELECT row, title, text FROM chunks ORDER BY row").fetchall()
        return (np.asarray([r for r, _, _ in data], dtype="int64"), [t for _, t, _ in data],
                [x for _, _, x in data])
