"""Writing segments: a new one for each live write, a merged one when the merge policy asks.

A segment's files are written under names no manifest uses yet (store.sN.sqlite, dense.sN.pJ.faiss,
sparse.sN.npz), each to a .tmp file that is fsynced and renamed; only then does the caller replace the
manifest. A crash anywhere before that leaves the previous manifest and all of its files in place, and the
next write sweeps what the crash left (retrieval/generations.py).

Merge policy (Lucene's tiered idea, simplified): when there are more than `max_segments` segments, the
smallest ones are merged into one until half that many remain; a segment whose chunks are more than
`merge_deletes_pct` percent deleted is rewritten without them. Segments of more than `merge_max_chunks`
chunks are left out of automatic merges (rewriting a big base segment costs as much as a build);
`RetrievalIndex.merge(full=True)` merges everything into one segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.config import IndexConfig
from retrieval.dense import DenseIndex, choose_type, make_params
from retrieval import generations
from retrieval.generations import fsync_rename
from retrieval.sparse import SparseSegment
from retrieval.store import Store
from retrieval.types import Chunk

if TYPE_CHECKING:
    from retrieval.segments import Segment, Snapshot

# Below this many chunks a segment's dense index is flat (exact, nothing to train) whatever the index type:
# IVF cannot train on a handful of vectors, and an exact scan of a few thousand is faster than a graph.
SMALL_SEGMENT = 10_000


def dense_kind(cfg: IndexConfig, n: int, build: bool = False) -> str:
    """The FAISS type of a segment of n chunks. A build writes what the config asks for at any size (the
    index type a user chose); segments from live writes and merges are flat while small."""
    if not build and n < SMALL_SEGMENT:
        return "flat"
    return choose_type(cfg.index_type, n)


def write_segment(d: Path, seg_id: int, chunks: list[Chunk], hashes: list[str], rows: np.ndarray,
                  vectors: np.ndarray | None, cfg: IndexConfig, dim: int, *, kind: str | None = None,
                  dense: DenseIndex | None = None, base: tuple[int, float] = (0, 0.0),
                  store: Path | None = None) -> dict:
    """Write one segment; returns its manifest entry. `rows` ascending, one per chunk. `dense`: a prebuilt
    dense index of exactly these rows; else one of `kind` is made from `vectors`. `base=(chunks, tokens)` of
    the other segments: BM25 scores this one with the mean chunk length of the whole index. `store`: a store
    file already written with these rows (a merge), renamed into place instead of writing one."""
    rows = np.asarray(rows, dtype="int64")
    name = f"store.s{seg_id}.sqlite"
    if store is None:
        store = d / (name + ".tmp")
        if store.exists():
            store.unlink()
        st = Store(store, create=True)
        try:
            st.add_chunks(chunks, hashes, rows)
        finally:
            st.close()
    fsync_rename(store, d / name)
    generations.crash_point("after_store")
    if dense is None:
        kind = kind or dense_kind(cfg, len(rows))
        params = make_params(kind, dim, len(rows), cfg)
        train = None
        if kind.startswith("ivf"):
            train = vectors[np.random.default_rng(0).permutation(len(vectors))[:200_000]]
        dense = DenseIndex.create(kind, dim, dict(params, use_gpu=cfg.use_gpu), cfg.shards, train)
        dense.add(vectors, rows)
    params = {k: v for k, v in dense.params.items() if k != "use_gpu"}
    files = dense.save(d, seg_id)
    generations.crash_point("after_dense")
    sparse = SparseSegment.build(rows, [c.title for c in chunks], [c.text for c in chunks], base)
    sparse_name = f"sparse.s{seg_id}.npz"
    sparse.save(d / sparse_name)
    generations.crash_point("after_sparse")
    return {"id": seg_id, "store": name, "dense": files, "sparse": sparse_name, "type": dense.kind,
            "params": params, "chunks": len(rows), "documents": len({c.doc_id for c in chunks}),
            "tokens": sparse.tokens}


def pick_merge(snap: "Snapshot", cfg: IndexConfig, full: bool = False) -> list["Segment"]:
    """The segments to merge now (none: nothing to do). See the module docstring for the policy."""
    segs = list(snap.segments)
    if full:
        return segs if len(segs) > 1 or len(snap.dead) else []
    live = {s.id: s.n - len(snap.dead_in(s)) for s in segs}
    small = [s for s in segs if s.n <= cfg.merge_max_chunks]
    pick = {s.id: s for s in small if s.n and 100 * (s.n - live[s.id]) > cfg.merge_deletes_pct * s.n}
    if len(segs) > cfg.max_segments:
        by_size = sorted(small, key=lambda s: (live[s.id], s.id))
        want = len(segs) - max(1, cfg.max_segments // 2) + 1  # merging m segments removes m - 1
        for s in by_size[:max(2, want)]:
            pick[s.id] = s
    if len(pick) == 1 and not len(snap.dead_in(next(iter(pick.values())))):
        return []
    return sorted(pick.values(), key=lambda s: s.id)


def merge_segments(d: Path, snap: "Snapshot", segs: list["Segment"], seg_id: int, cfg: IndexConfig, dim: int,
                   vectors_for, full: bool = False) -> dict:
    """Write one segment holding the live chunks of `segs` (rows kept as they are, so tombstones and
    memoised rows elsewhere stay valid). `vectors_for(rows, hashes)`: cached vectors, used where a
    segment's FAISS index cannot give its vectors back (IVF-PQ)."""
    tmp = d / f"store.s{seg_id}.sqlite.tmp"
    if tmp.exists():
        tmp.unlink()
    out = Store(tmp, create=True)
    vec_parts, row_parts = [], []
    try:
        for s in segs:
            keep = snap.live(s.rows)
            if not len(keep):
                continue
            out.copy_rows_from(s.store, keep)
            v = s.dense.reconstruct(keep) if s.partition is None else None
            if v is None:
                hashes = s.store.hashes_for_rows(keep)
                v = vectors_for(keep, [hashes[int(r)] for r in keep])
            row_parts.append(keep)
            vec_parts.append(v)
        rows, titles, texts = out.titles_and_texts()
        meta = out.con.execute("SELECT row, chunk_id, doc_id, source, h FROM chunks ORDER BY row").fetchall()
    finally:
        out.close()
    by_row = dict(zip(np.concatenate(row_parts).tolist(), np.concatenate(vec_parts))) if row_parts else {}
    vectors = np.stack([by_row[int(r)] for r in rows]) if len(rows) else np.zeros((0, dim), "float32")
    chunks = [Chunk(cid, did, text, title, src) for (_, cid, did, src, _), title, text in zip(meta, titles, texts)]
    others = [s for s in snap.segments if s not in segs]
    base = (sum(s.n for s in others), sum(float(s.meta["tokens"]) for s in others))
    entry = write_segment(d, seg_id, chunks, [h for *_, h in meta], rows, vectors, cfg, dim,
                          kind=dense_kind(cfg, len(rows), build=full), base=base, store=tmp)
    generations.crash_point("after_merge")
    return entry
