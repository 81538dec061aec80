"""The pieces an index is read from: immutable segments, and the snapshot a search reads.

A `Segment` is one store (rows, text, metadata), its dense (FAISS) index and its sparse (BM25) index, all
written once. Its dense and sparse parts load on first use (a writer that only appends never loads the
vectors), and what is memoised about it (the rows a filter matches, the vectors of those rows) stays valid
for its whole life, across generations.

A `Snapshot` is what one generation of the manifest names: its segments and the rows deleted since
(tombstones). Reads go to every segment and leave out the tombstones. Installing a new generation reuses
the segments already loaded: only a new segment is opened, so following a write costs what the write
added, not the whole index.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval.dense import DenseIndex
from retrieval.sparse import SparseSegment
from retrieval.store import Store
from retrieval.types import Chunk

MEMO_ENTRIES = 16  # memoised filter results per segment (each at most one int64 per row)


class Segment:
    def __init__(self, d: Path, meta: dict, dim: int, faiss: dict, use_gpu: bool = False, mmap: bool = False,
                 partition: tuple[int, int] | None = None,
                 vectors_for: Callable[[np.ndarray, list[str]], np.ndarray | None] | None = None):
        """`partition=(n, i)`: load only the vectors of rows with row % n == i (a Ray shard actor).
        `vectors_for(rows, hashes)`: cached vectors, for a partition this segment's stored shards cannot give."""
        self.dir, self.meta, self.id = Path(d), meta, int(meta["id"])
        self.dim, self.faiss, self.use_gpu, self.mmap = dim, faiss, use_gpu, mmap
        self.partition, self._vectors_for = partition, vectors_for
        self.store = Store(self.dir / meta["store"])
        self._dense: DenseIndex | None = None
        self._sparse: SparseSegment | None = None
        self._load = threading.RLock()  # re-entrant: loading a partition's dense vectors reads `rows` (sparse)
        self.memo: dict = {}
        self.memo_lock = threading.Lock()

    @property
    def n(self) -> int:
        return int(self.meta["chunks"])

    @property
    def kind(self) -> str:
        return self.meta["type"]

    @property
    def sparse(self) -> SparseSegment:
        if self._sparse is None:
            with self._load:
                if self._sparse is None:
                    self._sparse = SparseSegment.load(self.dir / self.meta["sparse"])
        return self._sparse

    @property
    def rows(self) -> np.ndarray:
        return self.sparse.rows

    @property
    def dense(self) -> DenseIndex:
        if self._dense is None:
            with self._load:
                if self._dense is None:
                    self._dense = self._load_dense()
        return self._dense

    def _load_dense(self) -> DenseIndex:
        files, kind = list(self.meta["dense"]), self.kind
        params = dict(self.meta["params"], use_gpu=self.use_gpu)
        if self.partition is None:
            return DenseIndex.load(self.dir, kind, self.dim, params, files, mmap=self.mmap)
        n, i = self.partition
        if len(files) % n == 0:
            # stored shard j holds rows with row % len(files) == j; as n divides that count, the stored shards
            # j with j % n == i together hold exactly the rows with row % n == i
            mine = [f for j, f in enumerate(files) if j % n == i]
            return DenseIndex.load(self.dir, kind, self.dim, params, mine, mmap=self.mmap)
        whole = DenseIndex.load(self.dir, kind, self.dim, params, files)
        rows = self.rows[self.rows % n == i]
        vecs = whole.reconstruct(rows)
        if vecs is None and self._vectors_for is not None:
            hashes = self.store.hashes_for_rows(rows)
            vecs = self._vectors_for(rows, [hashes[int(r)] for r in rows])
        if vecs is None:
            from retrieval.errors import RetrievalError

            raise RetrievalError(f"cannot split segment {self.id} of {str(self.dir)!r} ({kind}, {len(files)} "
                                 f"stored shards) into {n} shards: its vectors are not recoverable; use a shard "
                                 f"count that divides {len(files)} or rebuild with shards={n}")
        flat = DenseIndex.create("flat", self.dim, {}, 1, None)
        flat.add(vecs, rows)
        return flat

    def remember(self, key, make: Callable[[], object]):
        """A value about this segment, made once (segments never change) and kept among the last few."""
        with self.memo_lock:
            if key in self.memo:
                self.memo[key] = self.memo.pop(key)  # most recently used last
                return self.memo[key]
        value = make()
        with self.memo_lock:
            self.memo[key] = value
            while len(self.memo) > MEMO_ENTRIES:
                self.memo.pop(next(iter(self.memo)))
        return value

    def close(self) -> None:
        self.store.close()


class Snapshot:
    """One generation: its manifest, segments and tombstones (`dead`, ascending rows)."""

    def __init__(self, manifest: dict, segments: tuple[Segment, ...], dead: np.ndarray):
        self.manifest, self.segments = manifest, segments
        self.dead = np.asarray(dead, dtype="int64")
        self._memo: dict = {}
        self._lock = threading.RLock()  # a memoised value may be made from another one

    @property
    def number(self) -> int:
        return int(self.manifest.get("generation", 0))

    def pin(self) -> None:
        for s in self.segments:
            s.store.pin()

    def unpin(self) -> None:
        for s in self.segments:
            s.store.unpin()

    # ---- tombstones ---------------------------------------------------------------------------
    def _once(self, key, make):
        with self._lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]

    def dead_in(self, seg: Segment) -> np.ndarray:
        """Tombstoned rows of one segment."""
        return self._once(("dead", seg.id), lambda: self.dead[np.isin(self.dead, seg.rows)] if len(self.dead)
                          else self.dead)

    def live_mask(self, seg: Segment) -> np.ndarray | None:
        """Boolean over the segment's positions: not tombstoned (None when nothing of it is)."""
        def make():
            dead = self.dead_in(seg)
            if not len(dead):
                return None
            m = np.ones(seg.sparse.n, dtype=bool)
            m[seg.sparse.positions(dead)] = False
            return m
        return self._once(("live", seg.id), make)

    def exclude(self, seg: Segment):
        """A FAISS selector of the segment's tombstones (None when it has none)."""
        def make():
            import faiss

            dead = self.dead_in(seg)
            return faiss.IDSelectorNot(faiss.IDSelectorBatch(dead)) if len(dead) else None
        sel = self._once(("excl", seg.id), make)
        return sel

    def live(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype="int64")
        return rows[~np.isin(rows, self.dead)] if len(self.dead) and len(rows) else rows

    def _alive(self, pairs):
        dead = set(self.dead.tolist()) if len(self.dead) < 100_000 else None
        if dead is None:
            keep = set(self.live([r for r, _ in pairs]).tolist())
            return [(r, x) for r, x in pairs if r in keep]
        return [(r, x) for r, x in pairs if r not in dead]

    # ---- reads over all segments --------------------------------------------------------------
    def count(self) -> int:
        return int(self.manifest["counts"]["chunks"])

    def rows_for_docs(self, doc_ids: list[str]) -> list[int]:
        rows: list[int] = []
        for s in self.segments:
            rows += s.store.rows_for_docs(doc_ids)
        return sorted(self.live(rows).tolist())

    def rows_matching(self, flt: dict, seg: Segment) -> np.ndarray:
        """Live rows of one segment that match a filter (the match memoised on the segment)."""
        key = ("filter", json.dumps(flt, sort_keys=True, default=str))
        return self.live(seg.remember(key, lambda: seg.store.rows_matching(flt)))

    def get_rows(self, rows) -> dict[int, Chunk]:
        want = self.live(np.fromiter((int(r) for r in rows), dtype="int64"))
        out: dict[int, Chunk] = {}
        for s in self.segments:
            mine = want[np.isin(want, s.rows)] if len(self.segments) > 1 else want
            if len(mine):
                out.update(s.store.get_rows(mine))
        return out

    def hashes_for_rows(self, rows) -> dict[int, str]:
        out: dict[int, str] = {}
        rows = np.asarray(rows, dtype="int64")
        for s in self.segments:
            mine = rows[np.isin(rows, s.rows)] if len(self.segments) > 1 else rows
            if len(mine):
                out.update(s.store.hashes_for_rows(mine))
        return out

    def get_chunk_ids(self, chunk_ids: list[str]) -> dict[str, Chunk]:
        found = [p for s in self.segments for p in s.store.get_chunk_ids(chunk_ids)]
        return {c.chunk_id: c for _, c in self._alive(found)}

    def chunks_for_doc(self, doc_id: str) -> list[Chunk]:
        found = [p for s in self.segments for p in s.store.chunks_for_doc(doc_id)]
        return [c for _, c in sorted(self._alive(found), key=lambda x: x[0])]

    def chunk_ids(self) -> list[str]:
        found = [p for s in self.segments for p in s.store.chunk_ids()]
        return [c for _, c in sorted(self._alive(found), key=lambda x: x[0])]

    def doc_ids(self) -> list[str]:
        found = [p for s in self.segments for p in s.store.doc_ids()]
        return list(dict.fromkeys(d for _, d in self._alive(found)))

    def all_rows_and_hashes(self) -> tuple[np.ndarray, list[str]]:
        pairs = [p for s in self.segments for p in s.store.con.execute("SELECT row, h FROM chunks").fetchall()]
        pairs = sorted(self._alive(pairs))
        return np.asarray([r for r, _ in pairs], dtype="int64"), [h for _, h in pairs]

    def stats(self) -> tuple[int, float]:
        """(chunks, tokens) over all segments, tombstoned chunks included (BM25's collection statistics)."""
        return (sum(s.n for s in self.segments), sum(float(s.meta["tokens"]) for s in self.segments))

    def live_docs(self, doc_ids: list[str]) -> tuple[list[int], set[str]]:
        """(live rows, ids that have any) of these documents."""
        pairs: list[tuple[int, str]] = []
        ids = list(dict.fromkeys(doc_ids))
        for s in self.segments:
            for i in range(0, len(ids), 900):
                part = ids[i:i + 900]
                pairs += s.store.con.execute(f"SELECT row, doc_id FROM chunks WHERE doc_id IN "
                                             f"({','.join('?' * len(part))})", part).fetchall()
        pairs = self._alive(pairs)
        return sorted(r for r, _ in pairs), {d for _, d in pairs}
