"""SQLite document store: chunk text and metadata by integer row (the FAISS id), plus an FTS5 table
for BM25. FTS5 supports live insert/delete and joins with the filter SQL, so sparse search honours
filters inside the query and deletions are immediate.

Each thread reads through its own connection, so one thread's long query never makes another thread's
search wait (SQLite serves many readers of one file at once; a published store file is never written,
live writes go to the next generation's copy). A thread may bound its queries with `deadline()`.
"""

from __future__ import annotations

import json
import math
import re
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
  row INTEGER PRIMARY KEY AUTOINCREMENT,
  chunk_id TEXT NOT NULL UNIQUE,
  doc_id TEXT NOT NULL,
  title TEXT NOT NULL DEFAULT '',
  text TEXT NOT NULL,
  source TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}',
  h TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(title, text, tokenize='porter unicode61');
"""
_WORD = re.compile(r"\w+", re.UNICODE)
# BM25 uses at most this many distinct query terms (the first ones): FTS5 scores the posting list of every
# term it is given, so an unbounded query (a pasted book) would hold a search thread for minutes.
MAX_QUERY_TERMS = 64
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
        if create:
            self.con.executescript(SCHEMA)
            self.con.commit()

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection to the store (opened on first use)."""
        con = getattr(self._local, "con", None)
        if con is None:
            with self.lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                con = sqlite3.connect(str(self.path), check_same_thread=False)
                con.set_progress_handler(_past_deadline, _PROGRESS_STEPS)
                self._cons.append(con)
            self._local.con = con
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

    def copy_to(self, dst: str | Path) -> None:
        """A consistent copy (SQLite backup API), used to write the next generation. Readers in other
        threads go on searching meanwhile (their own connections)."""
        out = sqlite3.connect(str(dst))
        with self.lock:
            self.con.backup(out)
        out.close()

    # ---- writes -------------------------------------------------------------------------------
    def _changed(self) -> None:
        self.__dict__.pop("_df", None)  # term statistics memoised by _doc_freqs / _terms
        self.__dict__.pop("_n", None)

    def add_chunks(self, chunks: list[Chunk], hashes: list[str]) -> list[int]:
        rows = []
        with self.lock:
            with self.con:
                for c, h in zip(chunks, hashes):
                    cur = self.con.execute(
                        "INSERT INTO chunks (chunk_id, doc_id, title, text, source, metadata, h) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (c.chunk_id, c.doc_id, c.title or "", c.text, c.source or "",
                         metadata_json(c.metadata, c.doc_id), h))
                    rows.append(cur.lastrowid)
                self.con.executemany("INSERT INTO chunks_fts (rowid, title, text) VALUES (?,?,?)",
                                     [(r, c.title or "", c.text) for r, c in zip(rows, chunks)])
            self._changed()  # after the commit, under the lock: no reader memoises the old counts in between
        return rows

    def delete_docs(self, doc_ids: list[str]) -> list[int]:
        rows = self.rows_for_docs(doc_ids)
        with self.lock:
            with self.con:
                for i in range(0, len(rows), 900):
                    part = [int(r) for r in rows[i:i + 900]]
                    marks = ",".join("?" * len(part))
                    self.con.execute(f"DELETE FROM chunks WHERE row IN ({marks})", part)
                    self.con.execute(f"DELETE FROM chunks_fts WHERE rowid IN ({marks})", part)
            self._changed()
        return rows

    # ---- reads (this thread's connection, no lock: readers never wait for each other) -----------
    def count(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def doc_count(self) -> int:
        return self.con.execute("SELECT COUNT(DISTINCT doc_id) FROM chunks").fetchone()[0]

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

    def get_chunk_ids(self, chunk_ids: list[str]) -> dict[str, Chunk]:
        out: dict[str, Chunk] = {}
        for i in range(0, len(chunk_ids), 900):
            part = list(chunk_ids[i:i + 900])
            q = (f"SELECT row, chunk_id, doc_id, title, text, source, metadata FROM chunks "
                 f"WHERE chunk_id IN ({','.join('?' * len(part))})")
            out.update((c.chunk_id, c) for _, c in self._rows_to_chunks(self.con.execute(q, part).fetchall()))
        return out

    def chunks_for_doc(self, doc_id: str) -> list[Chunk]:
        data = self.con.execute("SELECT row, chunk_id, doc_id, title, text, source, metadata FROM chunks "
                                "WHERE doc_id = ? ORDER BY row", (doc_id,)).fetchall()
        return [c for _, c in self._rows_to_chunks(data)]

    def chunk_ids(self) -> list[str]:
        return [c for (c,) in self.con.execute("SELECT chunk_id FROM chunks ORDER BY row")]

    def doc_ids(self) -> list[str]:
        return [d for (d,) in self.con.execute("SELECT DISTINCT doc_id FROM chunks")]

    def _doc_freqs(self, terms: list[str]) -> dict[str, int]:
        """Documents (chunks) containing each query term, after FTS5's own porter stemming; memoised, as
        a published store is never written (a live write makes a new one; writes clear the memo anyway)."""
        con = self.con
        if not getattr(self._local, "vocab", False):  # temp tables belong to one connection
            # the query's terms go through a temp FTS5 table with the same tokenizer to get their stems;
            # fts5vocab then reads each stem's document count straight from the index
            con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.q_terms USING fts5(t, tokenize='porter unicode61')")
            con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.q_stems USING fts5vocab(temp, q_terms, 'instance')")
            con.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_vocab USING fts5vocab(main, chunks_fts, 'row')")
            self._local.vocab = True
        memo = self.__dict__.setdefault("_df", {})
        todo = [t for t in terms if t not in memo]
        if todo:
            con.execute("DELETE FROM temp.q_terms")
            con.executemany("INSERT INTO temp.q_terms(rowid, t) VALUES (?, ?)", list(enumerate(todo, 1)))
            for rowid, stem in con.execute("SELECT doc, term FROM temp.q_stems").fetchall():
                got = con.execute("SELECT doc FROM temp.fts_vocab WHERE term = ?", (stem,)).fetchone()
                t, n = todo[rowid - 1], got[0] if got else 0
                memo[t] = min(memo[t], n) if t in memo else n  # a term of several tokens is a phrase: <= each
            for t in todo:
                memo.setdefault(t, 0)
        return {t: memo[t] for t in terms}

    def _terms(self, query: str) -> tuple[list[str], list[str]]:
        """(useful, frequent) query terms: frequent ones are in more than half of the chunks. Only the
        first MAX_QUERY_TERMS distinct terms count, and the scan for them stops there."""
        seen: dict[str, None] = {}
        for m in _WORD.finditer(query):
            seen[m.group().lower()] = None
            if len(seen) >= MAX_QUERY_TERMS:
                break
        terms = list(seen)
        if not terms:
            return [], []
        with self.lock:
            n = self.__dict__.get("_n")
            if n is None:
                n = self._n = self.con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            df = self._doc_freqs(terms)
        useful = [t for t in terms if 0 < df[t] and 2 * df[t] <= n]
        return (useful, [t for t in terms if t not in useful]) if useful else (terms, [])

    def bm25(self, query: str, k: int, flt: dict[str, list], restrict: str | None = None) -> list[tuple[int, float]]:
        """Top-k (row, score) by FTS5 BM25 (score negated so higher is better), filter joined in SQL;
        `restrict`: one more SQL condition on the chunks table `c` (a Ray shard's rows).

        Terms found in more than half of the chunks are left out of the ranked query: FTS5 clamps their
        IDF to ~0, so they cannot change the ranking, but OR-ing them in makes SQLite score their whole
        posting lists (stop words: "the", "of"), which was most of a query's time on a large index. If
        the useful terms match fewer than k chunks, chunks that match only the frequent terms fill up to
        k as before, with score 0 in row order (their BM25 scores were ~0 anyway; taking them in row order
        avoids scoring whole posting lists and gives the same fillers however the index is sharded)."""
        useful, frequent = self._terms(query)
        if not useful:
            return []
        where, params = filter_sql(flt)
        if restrict:
            where = f"({where}) AND ({restrict})"
        head = ("SELECT f.rowid, bm25(chunks_fts, 0.5, 1.0) AS s FROM chunks_fts f "
                + ("JOIN chunks c ON c.row = f.rowid " if flt or restrict else "")
                + f"WHERE chunks_fts MATCH ? AND {where} ")
        con = self.con
        data = con.execute(head + "ORDER BY s LIMIT ?", [_or(useful), *params, int(k)]).fetchall()
        if len(data) < k and frequent:
            # every chunk the useful terms match is in `data` already; the rest match only frequent terms
            seen = {r for r, _ in data}
            more = con.execute(head + "ORDER BY f.rowid LIMIT ?",
                               [_or(frequent), *params, int(k) + len(seen)]).fetchall()
            data += [(r, 0.0) for r, _ in more if r not in seen][:k - len(data)]
        return [(int(r), -float(s)) for r, s in data]


def _or(terms: list[str]) -> str:
    """An FTS5 OR of quoted terms: user text never reaches FTS syntax."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
