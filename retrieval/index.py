"""RetrievalIndex: a self-describing index directory of immutable segments (FAISS + BM25 + SQLite rows)
that is built, opened, searched (dense, BM25, hybrid, with filters) and updated live.

Live updates work as in Lucene: a write adds a small new segment holding its chunks (dense, sparse and
rows), a delete (or the replaced version of a document) becomes a tombstone, and then the manifest is
replaced; the small segments are merged later, in the background or once too many pile up
(retrieval/segment_writer.py). A one-document write costs what that document costs, not what the index
costs. A crash at any point leaves the last manifest and all of its files readable; files a crash left
half-written are swept by the next write (retrieval/generations.py). Writers, in one process or several,
take the directory's writer lock and first move to the latest generation.

Concurrency: a search reads one `Snapshot` (the segments and tombstones of one generation), taken when it
starts; a write publishes a new one by swapping a reference, so searches never wait for a write and never
see half of one. A reader in another process follows with `refresh()`, which opens only the segments it
has not seen. Embedding (queries and ingest) goes through one gate per embedder (retrieval/embed_gate.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retrieval.config import IndexConfig
from retrieval.dense import DenseIndex, choose_type
from retrieval.embed_gate import EMBED_SLICE_CHARS, LockedCache, embed_gate, slices
from retrieval.embedders import (Embedder, EmbeddingCache, canonical_name, content_hash, embed_with_cache,
                                 embedder_for)
from retrieval.errors import RetrievalError
from retrieval.filters import normalize_filter
from retrieval.fusion import fuse
from retrieval.generations import (  # noqa: F401  (FORMAT*, MANIFEST, read_manifest: importable from here too)
    CACHE_FILE, FORMAT, FORMAT_VERSION, MANIFEST, crash_point, fsync_rename, max_segment_on_disk, read_manifest,
    sha256_file, sweep, write_manifest, writer_lock)
from retrieval.rerank import Reranker
from retrieval.search import EXACT_FILTER_LIMIT, Partition, bm25_rows, dense_rows  # noqa: F401
from retrieval.segment_writer import merge_segments, pick_merge, write_segment
from retrieval.segments import Segment, Snapshot
from retrieval.store import deadline, metadata_json
from retrieval.types import Chunk, Document, Hit

MODES = ("hybrid", "dense", "bm25")
_EMPTY = np.zeros(0, dtype="int64")
_OPEN_RETRIES = 10  # generations committed while one open()/refresh() runs; more means writers outpace any reader
T = TypeVar("T")


class RetrievalIndex:
    """See the module docstring. Thread- and process-safe: mutations hold a thread lock and the directory's
    writer lock (retrieval.generations.writer_lock); reads use the current snapshot."""

    def __init__(self, path: Path, snapshot: Snapshot, config: IndexConfig, embedder: Embedder | None = None,
                 partition: Partition = None, mmap: bool = False):
        self.path = Path(path)
        self._snap = snapshot
        self.config = config
        man = snapshot.manifest
        self.embedder_name: str = man["embedder"]["name"]
        self.dim: int = int(man["embedder"]["dim"])
        self.partition, self._mmap = partition, mmap
        self._embedder = embedder
        self._cache: EmbeddingCache | None = None
        self._cache_lock = threading.Lock()
        self._lock = threading.RLock()  # writers of this object (the directory's writer lock is taken too)
        self._swap = threading.Lock()  # held only to read or replace the snapshot
        self._refresh_lock = threading.Lock()  # one refresh() at a time
        self._merging: threading.Thread | None = None
        self.merge_error: BaseException | None = None  # what the last background merge raised, if anything
        self.build_summary: dict[str, Any] = {}

    @property
    def manifest(self) -> dict:
        return self._snap.manifest

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._snap.segments

    @property
    def dense(self) -> DenseIndex:
        """The dense index of the largest segment (the one a build wrote)."""
        return max(self._snap.segments, key=lambda s: s.n).dense

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | Path, embedder: str | None = None, verify: bool = True,
             device: str | None = None, mmap: bool = False, partition: Partition = None) -> "RetrievalIndex":
        """Open an index. `embedder`: the model the caller intends to query with; a different one than
        the index was built with is an error. `verify`: check file checksums (sizes always).
        `partition=(n, i)`: hold only the vectors of rows with row % n == i (a Ray shard actor)."""
        d = Path(index_dir)
        man = read_manifest(d)
        check_embedder(d, man, embedder)

        def attempt(man: dict) -> "RetrievalIndex":
            _check_files(d, man, verify)
            cfg = IndexConfig(**man["config"])
            if device is not None:
                cfg = cfg.model_copy(update={"device": device})
            idx = cls(d, Snapshot(man, (), _EMPTY), cfg, partition=partition, mmap=mmap)
            idx._snap = idx._load(man, {})
            return idx

        return _follow_commits(d, man, attempt)

    def _load(self, man: dict, have: dict[int, Segment]) -> Snapshot:
        """The snapshot a manifest names, reusing segments already open (`have`, by id)."""
        d, segs = self.path, []
        try:
            for meta in man["segments"]:
                seg = have.get(int(meta["id"]))
                if seg is None:
                    seg = Segment(d, meta, self.dim, man["faiss"], self.config.use_gpu, self._mmap, self.partition,
                                  self._cached_vectors)
                    try:
                        seg.store.con.execute("SELECT row FROM chunks LIMIT 1").fetchall()  # a cheap probe
                    except sqlite3.DatabaseError as e:
                        raise RetrievalError(f"index {str(d)!r} is damaged: {d / meta['store']} is not a readable "
                                             f"SQLite store ({e}); {_rebuild_hint(d, man)}") from None
                    segs.append(seg)
                    # load its BM25 matrix and vectors now, not at the first search: a merge (here or in another
                    # process) may sweep a merged-away segment's files while this snapshot still names them
                    try:
                        seg.sparse, seg.dense  # noqa: B018
                    except (RuntimeError, OSError, ValueError) as e:
                        raise RetrievalError(f"index {str(d)!r}: segment {meta['id']}'s files cannot be read ({e}); "
                                             f"{_rebuild_hint(d, man)}") from None
                    continue
                segs.append(seg)
            dead = np.load(d / man["tombstones"]) if man.get("tombstones") else _EMPTY
        except BaseException:
            for s in segs:
                if s.id not in have:
                    s.close()
            raise
        return Snapshot(man, tuple(segs), dead)

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, docs_or_corpus_path: list[Document] | str | Path, out_dir: str | Path,
              config: IndexConfig | None = None, show_progress: bool = False) -> "RetrievalIndex":
        """Load (when given a path), chunk, embed (reusing cached vectors in out_dir) and index.

        Rebuilding into an existing index directory replaces it atomically; the old one stays readable
        until the new manifest is in place. `build_summary` on the result says what happened.
        """
        from retrieval.chunking import chunk_documents
        from retrieval.embedders import load_tokenizer
        from retrieval.loaders import load_corpus

        cfg = config or IndexConfig()
        t0 = time.time()
        skipped: list[tuple[str, str]] = []
        corpus = None
        if isinstance(docs_or_corpus_path, (str, Path)):
            docs, skipped = load_corpus(docs_or_corpus_path, cfg.id_field, cfg.title_field, cfg.text_field)
            where = str(docs_or_corpus_path)
            src = Path(docs_or_corpus_path).expanduser().resolve()
            # recorded so that `add` names a file under the root as this build did (see loaders.load_corpus)
            corpus = {"path": str(src), "root": str(src.parent if src.is_file() else src)}
        else:
            docs, where = list(docs_or_corpus_path), "documents"
        docs = _dedupe_docs(docs, skipped)
        if not docs:
            why = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
            raise RetrievalError(f"corpus {where!r} has no usable documents" + (f" (skipped: {why})" if why else
                                 "") + "; give .txt/.md/.html/.pdf/.json/.jsonl files with text")
        embedder = embedder_for(cfg)
        # the loaded model's tokenizer when there is one; else the tokenizer alone (--ray: no model here)
        tok = embedder.tokenizer if embedder._model is not None else load_tokenizer(cfg.embedder)
        chunks = chunk_documents(docs, tok, cfg.chunk_size, cfg.chunk_overlap)
        if not chunks:
            raise RetrievalError(f"corpus {where!r} produced no chunks (all documents empty after tokenizing)")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = [_embed_text(c) for c in chunks]
        vectors, encoded = _embed_chunks(texts, embedder, out, cfg, show_progress)
        idx = cls._write_new(out, chunks, vectors, cfg, embedder.name, embedder, corpus=corpus)
        idx.build_summary = {"documents": len(docs), "chunks": len(chunks), "embedded": encoded,
                             "cached": len(chunks) - encoded, "skipped": skipped, "seconds": time.time() - t0,
                             "index_type": idx.dense.kind, "path": str(out)}
        return idx

    @classmethod
    def from_vectors(cls, out_dir: str | Path, chunks: list[Chunk], vectors: np.ndarray,
                     config: IndexConfig | None = None, embedder_name: str | None = None, *,
                     hashes: list[str] | None = None, dense: DenseIndex | None = None,
                     cache_vectors: bool = True) -> "RetrievalIndex":
        """Write an index from chunks whose vectors were computed elsewhere (no loading, chunking or
        embedding here); rebuilding into an existing index directory replaces it atomically, as `build`.

        `vectors`: one L2-normalised float32 row per chunk, in `chunks` order, made by `embedder_name`
        (default: `config.embedder`), the model that queries are embedded with after `open`.
        `hashes`: the chunks' embedding-cache keys (default: the content hash `build` uses, so a later
        build or `add_documents` reuses these vectors). `dense`: a prebuilt `DenseIndex` whose ids are the
        rows 1..n in `chunks` order (for indexes too big to build twice); default: one is made from
        `config`. With `cache_vectors` the vectors also go into the index's embedding cache, as after a
        `build` (filtered searches that match few chunks score them exactly from that cache).
        """
        cfg = config or IndexConfig()
        if len(chunks) != len(vectors):
            raise RetrievalError(f"from_vectors: {len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            raise RetrievalError("from_vectors: no chunks")
        if hashes is not None and len(hashes) != len(chunks):
            raise RetrievalError(f"from_vectors: {len(chunks)} chunks but {len(hashes)} hashes")
        vectors = np.ascontiguousarray(vectors, dtype="float32")
        name = canonical_name(embedder_name or cfg.embedder)
        hashes = hashes or [content_hash(name, _embed_text(c)) for c in chunks]
        out = Path(out_dir)
        idx = cls._write_new(out, chunks, vectors, cfg, name, hashes=hashes, dense=dense)
        if cache_vectors:
            idx.cache.put_many(hashes, vectors)
        return idx

    @classmethod
    def _write_new(cls, out: Path, chunks: list[Chunk], vectors: np.ndarray, cfg: IndexConfig,
                   embedder_name: str, embedder: Embedder | None = None,
                   hashes: list[str] | None = None, dense: DenseIndex | None = None,
                   corpus: dict | None = None) -> "RetrievalIndex":
        """Write a fresh index of one segment from chunks and their vectors (`build`, `from_vectors`); a
        prebuilt `dense` has ids that are the rows 1..n in chunk order. `corpus`: {path, root} of the corpus
        the chunks came from, kept in the manifest."""
        out.mkdir(parents=True, exist_ok=True)
        with writer_lock(out):
            old_gen = 0
            try:
                old_gen = int(read_manifest(out).get("generation", 0))
            except RetrievalError:
                pass
            dim = int(vectors.shape[1])
            hashes = hashes or [content_hash(embedder_name, _embed_text(c)) for c in chunks]
            seg_id = max_segment_on_disk(out) + 1
            rows = np.arange(1, len(chunks) + 1, dtype="int64")
            kind = choose_type(cfg.index_type, len(chunks))
            entry = write_segment(out, seg_id, chunks, hashes, rows, vectors, cfg, dim, kind=kind, dense=dense)
            man = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": old_gen + 1,
                   "embedder": {"name": embedder_name, "dim": dim},
                   "faiss": {"type": entry["type"], "params": entry["params"], "shards": len(entry["dense"]),
                             "metric": "inner_product"},
                   "config": cfg.model_dump(mode="json"), "segments": [entry], "tombstones": None,
                   "next_row": len(chunks) + 1, "next_segment": seg_id + 1,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if corpus:
                man["corpus"] = corpus
            _count(man, len({c.doc_id for c in chunks}))
            write_manifest(out, man)
            sweep(out, man)
        idx = cls.open(out, verify=False)
        idx._embedder = embedder
        return idx

    @property
    def corpus_root(self) -> str | None:
        """The directory document ids are relative to (None for an index built from Documents)."""
        return (self.manifest.get("corpus") or {}).get("root")

    # ---- embedding ----------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = embedder_for(self.config)
        return self._embedder

    @property
    def cache(self) -> EmbeddingCache:
        with self._cache_lock:
            if self._cache is None:
                self._cache = EmbeddingCache(self.path / CACHE_FILE, self.dim)
            return self._cache

    def _cached_vectors(self, rows: np.ndarray, hashes: list[str]) -> np.ndarray | None:
        """Vectors of chunks from the embedding cache (None if any is missing)."""
        got = LockedCache(self.cache, self._cache_lock).get_many(list(set(hashes)))
        if any(h not in got for h in hashes):
            return None
        return np.stack([got[h] for h in hashes]) if hashes else np.zeros((0, self.dim), "float32")

    def embed(self, texts: list[str], bulk: bool = False) -> np.ndarray:
        """float32, L2-normalised embeddings from the index's own embedder. `bulk` (ingest): embedded in
        slices of about EMBED_SLICE_CHARS, each one turn at the embedder gate, so queries get in between."""
        texts = list(texts)
        gate = embed_gate(self.embedder)
        parts = []
        for piece in (slices(texts, EMBED_SLICE_CHARS) if bulk else [texts]):
            with gate.hold():
                parts.append(self.embedder.encode(piece))
        v = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else self.embedder.encode([])
        return check_dim(v, self.embedder_name, self.dim, self.path)

    # ---- snapshots ----------------------------------------------------------------------------
    def _current(self) -> Snapshot:
        with self._swap:
            return self._snap

    @contextmanager
    def reading(self) -> Iterator[Snapshot]:
        """The current snapshot, kept open until the block ends (a write meanwhile cannot close its stores)."""
        with self._swap:
            snap = self._snap
            snap.pin()
        try:
            yield snap
        finally:
            snap.unpin()

    def _install(self, snap: Snapshot) -> bool:
        """Publish a snapshot unless a newer one is in place (compare and swap); segments it no longer names
        close once the searches that started on them are done."""
        with self._swap:
            old = self._snap
            if snap.number <= old.number and old.segments:
                return False
            self._snap = snap
        keep = {s.id for s in snap.segments}
        for s in old.segments:
            if s.id not in keep:
                s.store.retire()
        return True

    def refresh(self, force: bool = False) -> bool:
        """Pick up a generation another process (or another index object) committed since this one was
        opened or last refreshed; True when one was installed. Costs one stat of the manifest when nothing
        changed, so a long-lived reader (the gateway, a Ray shard) may call it before every search; opens
        only segments it has not seen. Never waits for a write of this object. `force` (a caller told that a
        write was committed, e.g. a Ray shard after its writer returned): read the manifest even when its stat
        looks unchanged (timestamps are coarse, inodes are reused), wait for a refresh in progress, and raise
        what keeps the new generation from opening instead of staying on the old one.
        Both follow a generation committed while the refresh runs (see _follow_commits)."""
        try:
            st = (self.path / MANIFEST).stat()
        except OSError:
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if (sig == self.__dict__.get("_manifest_sig") and not force) or not self._refresh_lock.acquire(blocking=force):
            return False
        try:
            cur = self._current()
            have = {s.id: s for s in cur.segments}
            snap = _follow_commits(self.path, read_manifest(self.path),
                                   lambda man: self._load(man, have) if int(man.get("generation", 0)) > cur.number
                                   else None)
            if snap is None:
                self._manifest_sig = sig
                return False
            if not self._install(snap):
                for s in snap.segments:
                    if s not in cur.segments:
                        s.close()
                return False
            self._manifest_sig = sig
            return True
        except (RetrievalError, OSError):
            if force:  # the caller was told a write is committed: staying on the old generation would hide it
                raise
            return False  # a manifest being replaced right now: the next call looks again
        finally:
            self._refresh_lock.release()

    def health(self) -> dict[str, Any]:
        """What the index holds, from the manifest in memory: never waits for a search or a write."""
        man = self._current().manifest
        counts = man.get("counts", {})
        return {"chunks": counts.get("chunks"), "documents": counts.get("documents"),
                "generation": man.get("generation"), "embedder": self.embedder_name,
                "index_type": man.get("faiss", {}).get("type"), "segments": counts.get("segments")}

    # ---- search -------------------------------------------------------------------------------
    def search(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
               deadline_at: float | None = None, rerank: Reranker | None = None) -> list[Hit]:
        return self.search_batch([query], k, mode, filter, deadline_at, rerank)[0]

    def search_batch(self, queries: list[str], k: int = 5, mode: str = "hybrid",
                     filter: dict | None = None, deadline_at: float | None = None,
                     rerank: Reranker | None = None) -> list[list[Hit]]:
        """Hits per query. `deadline_at` (time.monotonic()): past it the search stops, between stages and
        segments and inside SQLite queries, with TimeoutError. `rerank` (retrieval.rerank.Reranker): the
        search's first `rerank.candidates` hits, filters already applied, are re-scored by the
        cross-encoder and its best k are returned."""
        k = _check_k(k)
        if mode not in MODES:
            raise RetrievalError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(queries, str):
            queries = [queries]
        flt = normalize_filter(filter)
        if not queries:
            return []
        want = max(k, rerank.candidates) if rerank is not None else k  # hits taken out of the search
        ncand = max(want, self.config.candidates) if mode == "hybrid" else want
        vectors = self.embed(queries) if mode in ("dense", "hybrid") else None
        with self.reading() as snap, deadline(deadline_at):
            ranked = self.candidates(snap, vectors, queries, ncand, mode, flt, deadline_at)
            hits = self._hits([r[:want] for r in ranked], snap)
        if rerank is None:
            return hits
        _check_deadline(deadline_at)  # the cross-encoder pass itself cannot be stopped half-way
        return rerank.rerank_batch(queries, hits, k)

    def candidates(self, snap: Snapshot, vectors: np.ndarray | None, queries: list[str], ncand: int, mode: str,
                   flt: dict, deadline_at: float | None = None, fused: bool = True) -> Any:
        """Ranked (row, score) lists per query: fused for `mode`, or with `fused=False` the two lists
        {"dense": ..., "bm25": ...} per query (a Ray shard's part of a search)."""
        dense: list[list[tuple[int, float]]] = [[] for _ in queries]
        sparse: list[list[tuple[int, float]]] = [[] for _ in queries]
        if vectors is not None and mode in ("dense", "hybrid"):
            _check_deadline(deadline_at)
            dense = dense_rows(snap, vectors, ncand, flt, self.partition, self._cached_vectors)
        if mode in ("bm25", "hybrid"):
            _check_deadline(deadline_at)
            sparse = bm25_rows(snap, queries, ncand, flt, self.partition, lambda: _check_deadline(deadline_at))
        if not fused:
            return [{"dense": d, "bm25": s} for d, s in zip(dense, sparse)]
        if mode == "dense":
            return dense
        if mode == "bm25":
            return sparse
        return [fuse(self.config.fusion, d, s, self.config.dense_weight, self.config.rrf_k)
                for d, s in zip(dense, sparse)]

    def search_vectors(self, vectors: np.ndarray, k: int, filter: dict | None = None) -> list[list[Hit]]:
        """Dense search with precomputed (normalised) query vectors, batched."""
        k = _check_k(k)
        v = np.atleast_2d(np.asarray(vectors, dtype="float32"))
        if v.shape[1] != self.dim:
            raise RetrievalError(f"query vectors have dimension {v.shape[1]}, the index holds {self.dim}")
        with self.reading() as snap:
            return self._hits(dense_rows(snap, v, k, normalize_filter(filter), self.partition,
                                         self._cached_vectors), snap)

    def _hits(self, ranked: list[list[tuple[int, float]]], snap: Snapshot) -> list[list[Hit]]:
        chunks = snap.get_rows({r for lst in ranked for r, _ in lst})
        return [[Hit(chunks[r], s) for r, s in lst if r in chunks] for lst in ranked]

    # ---- reading (each read pins the snapshot it reads: a write meanwhile cannot close it) ------
    def get(self, chunk_ids: list[str]) -> list[Chunk]:
        """Chunks by id, in the order asked; ids not in the index are left out."""
        with self.reading() as snap:
            found = snap.get_chunk_ids(list(chunk_ids))
        return [found[c] for c in chunk_ids if c in found]

    def chunk_ids(self) -> list[str]:
        with self.reading() as snap:
            return snap.chunk_ids()

    def chunks_for_doc(self, doc_id: str) -> list[Chunk]:
        with self.reading() as snap:
            return snap.chunks_for_doc(doc_id)

    def doc_ids(self) -> list[str]:
        with self.reading() as snap:
            return snap.doc_ids()

    def __len__(self) -> int:
        return self._current().count()

    def stats(self) -> dict[str, Any]:
        m = self._current().manifest
        c = m["counts"]
        return {"path": str(self.path), "embedder": self.embedder_name, "dim": self.dim,
                "index_type": m["faiss"]["type"], "faiss_params": m["faiss"]["params"],
                "shards": m["faiss"]["shards"], "generation": m["generation"], "chunks": c["chunks"],
                "documents": c["documents"], "vectors": c["chunks"], "segments": c["segments"],
                "tombstones": c["tombstones"], "created": m.get("created"), "updated": m.get("updated"),
                "bytes": sum(f["bytes"] for f in m["files"].values())}

    # ---- live updates -------------------------------------------------------------------------
    def add_documents(self, docs: list[Document]) -> list[str]:
        """Chunk, embed and add documents as one new segment; a doc_id already in the index is replaced
        (its old chunks become tombstones). Persisted, and searched from the next query on.

        Chunking and embedding run before any lock is taken (searches go on meanwhile); the write itself
        is one small segment and one manifest. Metadata is checked first, so bad input fails before any work."""
        from retrieval.chunking import chunk_documents

        docs = _dedupe_docs(list(docs), [])
        for d in docs:
            metadata_json(d.metadata, d.doc_id)
        if not docs:
            return []
        gate = embed_gate(self.embedder)
        chunks: list[Chunk] = []
        for d in docs:  # one document per turn at the gate: queries get in between
            with gate.hold():
                chunks += chunk_documents([d], self.embedder.tokenizer, self.config.chunk_size,
                                          self.config.chunk_overlap)
        texts = [_embed_text(c) for c in chunks]
        cache = LockedCache(self.cache, self._cache_lock)
        vectors, _ = embed_with_cache(texts, lambda t: self.embed(t, bulk=True), cache, self.embedder_name,
                                      self.dim)
        hashes = [content_hash(self.embedder_name, t) for t in texts]
        with self._writing() as snap:
            old, present = snap.live_docs([d.doc_id for d in docs])
            entries, extra = [], {}
            if chunks:
                man = snap.manifest
                first = int(man["next_row"])
                rows = np.arange(first, first + len(chunks), dtype="int64")
                seg_id = max(int(man["next_segment"]), max_segment_on_disk(self.path) + 1)
                entries = [write_segment(self.path, seg_id, chunks, hashes, rows, vectors, self.config, self.dim,
                                         base=snap.stats())]
                extra = {"next_row": first + len(chunks), "next_segment": seg_id + 1}
            self._commit(snap, add=entries, dead_add=old,
                         docs_delta=len({c.doc_id for c in chunks}) - len(present), **extra)
        self._after_write()
        return [c.chunk_id for c in chunks]

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of these documents (tombstones); returns how many chunks went. Persisted."""
        with self._writing() as snap:
            rows, present = snap.live_docs(list(doc_ids))
            if not rows:
                return 0
            self._commit(snap, dead_add=rows, docs_delta=-len(present))
        self._after_write()
        return len(rows)

    def merge(self, full: bool = False) -> int:
        """Merge segments as the merge policy asks (`full`: all of them into one, without tombstones);
        returns how many segments were merged (0: nothing was due)."""
        with self._writing() as snap:
            segs = pick_merge(snap, self.config, full)
            if not segs:
                return 0
            seg_id = max(int(snap.manifest["next_segment"]), max_segment_on_disk(self.path) + 1)
            entries = []
            if any(len(snap.live(s.rows)) for s in segs):
                entries = [merge_segments(self.path, snap, segs, seg_id, self.config, self.dim, self._cached_vectors,
                                          full=full)]
            self._commit(snap, add=entries, remove={s.id for s in segs}, next_segment=seg_id + 1)
        return len(segs)

    def _after_write(self) -> None:
        """Start the merge a write made due: in a background thread (one at a time), or now."""
        if not pick_merge(self._current(), self.config):
            return
        if not self.config.background_merge:
            self.merge()
            return
        with self._lock:
            if self._merging is not None and self._merging.is_alive():
                return

            def run():
                try:
                    while self.merge():
                        pass
                except BaseException as e:  # kept for the caller: a merge that failed changed nothing on disk
                    self.merge_error = e

            self._merging = threading.Thread(target=run, name="raft-index-merge", daemon=True)
            self._merging.start()

    def wait_for_merges(self, timeout: float | None = None) -> None:
        """Wait for a background merge of this object to finish."""
        t = self._merging
        if t is not None:
            t.join(timeout)

    @contextmanager
    def _writing(self) -> Iterator[Snapshot]:
        """Hold the writer locks (threads, then processes) with this object moved to the latest generation,
        so a write lands on top of whatever another writer committed since this index was opened."""
        with self._lock, writer_lock(self.path):
            man = read_manifest(self.path)
            if man.get("generation") != self.manifest.get("generation"):
                self._install(self._load(man, {s.id: s for s in self._current().segments}))
            yield self._current()

    def _commit(self, snap: Snapshot, add: list[dict] = (), remove: set[int] = frozenset(),
                dead_add: list[int] = (), docs_delta: int = 0, **extra) -> None:
        """Write the next manifest (only inside _writing()): `snap`'s segments without `remove`, plus `add`
        (written already), with `dead_add` tombstoned. Then publish it and sweep what no manifest names."""
        man = dict(snap.manifest)
        gen = snap.number + 1
        dead = snap.dead
        if len(dead_add):
            dead = np.union1d(dead, np.asarray(dead_add, dtype="int64"))
        if remove:  # a merged segment left its tombstoned rows out: they are gone
            gone = np.concatenate([s.rows for s in snap.segments if s.id in remove])
            dead = dead[~np.isin(dead, gone)]
        tomb = man.get("tombstones")
        if len(dead_add) or remove:
            tomb = None
            if len(dead):
                tomb = f"tomb.g{gen}.npy"
                tmp = self.path / (tomb + ".tmp")
                with open(tmp, "wb") as f:
                    np.save(f, dead)
                fsync_rename(tmp, self.path / tomb)
        segments = [m for m in man["segments"] if int(m["id"]) not in remove] + list(add)
        base = max(segments, key=lambda m: m["chunks"]) if segments else None
        man.update(generation=gen, segments=segments, tombstones=tomb,
                   updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra)
        if base is not None:
            man["faiss"] = dict(man["faiss"], type=base["type"], params=base["params"])
        _count(man, int(man["counts"]["documents"]) + docs_delta, len(dead))
        write_manifest(self.path, man)
        self._install(self._load(man, {s.id: s for s in snap.segments}))
        sweep(self.path, man)

    def close(self) -> None:
        self.wait_for_merges()
        for s in self._current().segments:
            s.close()
        if self._cache is not None:
            self._cache.close()


# ---- helpers ----------------------------------------------------------------------------------
def check_embedder(d: str | Path, man: dict, embedder: str | None) -> None:
    """The model a caller means to query with (None: the index's own) is the one the index was built with."""
    if embedder is not None and canonical_name(embedder) != man["embedder"]["name"]:
        raise RetrievalError(
            f"index {str(d)!r} was built with embedder {man['embedder']['name']!r} "
            f"(dim {man['embedder']['dim']}), not {embedder!r}: its vectors are meaningless to that model. "
            f"Query with {man['embedder']['name']!r} or rebuild the index with the new embedder")


def check_dim(v: np.ndarray, embedder_name: str, dim: int, d: str | Path) -> np.ndarray:
    """`v`, once its width is the index's dimension (a model replaced under the same name is caught here)."""
    if v.shape[1] != dim:
        raise RetrievalError(f"embedder {embedder_name!r} now yields dimension {v.shape[1]} but the index "
                             f"at {str(d)!r} holds dimension {dim}; rebuild the index")
    return v


def _follow_commits(d: Path, man: dict, attempt: Callable[[dict], T]) -> T:
    """`attempt(man)`, again on the newer manifest when it fails because a writer (another process, or a
    background merge) committed and swept the files of the generation just read before they were open: as
    Lucene does. A failure while the manifest stays the same is real damage, and is raised."""
    for _ in range(_OPEN_RETRIES - 1):
        try:
            return attempt(man)
        except (RetrievalError, OSError):
            newer = read_manifest(d)
            if newer.get("generation") == man.get("generation"):
                raise
            man = newer
    return attempt(man)


def _check_files(d: Path, man: dict, verify: bool) -> None:
    """Every file the manifest names is there with its size (and, with `verify`, its checksum)."""
    rebuild = _rebuild_hint(d, man)
    for name, info in man["files"].items():
        p = d / name
        if not p.exists():
            raise RetrievalError(f"index {str(d)!r} is half-written or damaged: {name} named by the manifest "
                                 f"is missing; {rebuild}")
        if p.stat().st_size != info["bytes"] or (verify and sha256_file(p) != info["sha256"]):
            raise RetrievalError(f"index {str(d)!r} is damaged: {p} does not match the "
                                 f"{'size' if p.stat().st_size != info['bytes'] else 'checksum'} in the "
                                 f"manifest; {rebuild}")


def _count(man: dict, documents: int, dead: int = 0) -> None:
    chunks = sum(int(s["chunks"]) for s in man["segments"]) - dead
    man["counts"] = {"chunks": chunks, "documents": documents, "vectors": chunks, "segments": len(man["segments"]),
                     "tombstones": dead}


def _rebuild_hint(d: Path, man: dict) -> str:
    """How to rebuild the index at `d`: from the corpus directory it was built from, when it records one."""
    corpus = (man.get("corpus") or {}).get("path")
    return f"rebuild it: raft index build {corpus or 'CORPUS'} --out {d}"


def _check_deadline(at: float | None) -> None:
    if at is not None and time.monotonic() > at:
        raise TimeoutError("the search passed its deadline and was stopped")


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise RetrievalError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _embed_text(c: Chunk) -> str:
    """What is embedded for a chunk: its title (context for short passages) and its text."""
    return f"{c.title}\n{c.text}" if c.title else c.text


def _dedupe_docs(docs: list[Document], skipped: list[tuple[str, str]]) -> list[Document]:
    seen: set[str] = set()
    out = []
    for d in docs:
        if d.doc_id in seen:
            skipped.append((d.source or d.doc_id, f"duplicate document id {d.doc_id!r} (first one kept)"))
            continue
        seen.add(d.doc_id)
        out.append(d)
    return out


def _embed_chunks(texts: list[str], embedder: Embedder, out: Path, cfg: IndexConfig,
                  show_progress: bool) -> tuple[np.ndarray, int]:
    dim = embedder.dim
    cache = EmbeddingCache(out / CACHE_FILE, dim)
    try:
        if cfg.ray:
            from retrieval.ray_build import ray_encoder

            encode = ray_encoder(cfg)
        else:
            encode = embedder.encode
        if not show_progress:
            return embed_with_cache(texts, encode, cache, embedder.name, dim)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("embedding chunks"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task("embed", total=len(texts))
            return embed_with_cache(texts, encode, cache, embedder.name, dim,
                                    progress=lambda n: bar.advance(task, n))
    finally:
        cache.close()
