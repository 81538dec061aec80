"""RetrievalIndex: a self-describing index directory (FAISS + SQLite store + FTS5 BM25) that is built,
opened, searched (dense, BM25, hybrid, with filters) and updated live.

Atomic saves: every change writes a new *generation* of files (store.gN.sqlite, dense.gN.*) and then
replaces manifest.json, which names the generation and the files' sizes and checksums. A crash before
the manifest replace leaves the previous generation, still named by the old manifest, readable; files
of unfinished generations are swept on the next save. The embedding cache (embeddings.sqlite) is
content-addressed and updated in place. The on-disk side (manifest, renames, sweeping) is in
retrieval/generations.py.

Concurrency: a write builds the next generation on copies (the store file and the FAISS index) and then
swaps one reference, so searches never wait for a write and never see half of one; each search reads
the generation that was current when it started. Embedding (queries and ingest) goes through one gate
per embedder, first come first served and in small slices for ingest, so a big ingest delays a query by
about one slice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from retrieval.config import IndexConfig
from retrieval.dense import DenseIndex, choose_type, make_params
from retrieval.embedders import (Embedder, EmbeddingCache, canonical_name, content_hash, embed_with_cache,
                                 shared_embedder)
from retrieval.errors import RetrievalError
from retrieval.filters import normalize_filter
from retrieval.fusion import fuse
from retrieval.generations import (  # noqa: F401  (FORMAT*, MANIFEST, read_manifest: importable from here too)
    CACHE_FILE, FORMAT, FORMAT_VERSION, MANIFEST, crash_point, fsync_rename, max_gen_on_disk, read_manifest,
    sha256_file, sweep, write_manifest, writer_lock)
from retrieval.rerank import Reranker
from retrieval.store import Store, deadline, metadata_json
from retrieval.types import Chunk, Document, Hit

MODES = ("hybrid", "dense", "bm25")
EXACT_FILTER_LIMIT = 20_000  # filtered dense search is exact (cached vectors) below this many matches
EXACT_MEMO_ENTRIES = 8  # memoised filter matrices kept (each at most EXACT_FILTER_LIMIT x dim float32: 30 MB at 384-d)
# Ingest embeds about this many characters (~500 tokens: a few chunks) per turn at the embedder gate: a
# waiting query gets in after one slice (tens of ms on a free CPU core), not after the whole document.
EMBED_SLICE_CHARS = 2048


class EmbedGate:
    """One embedding (or tokenizing) call at a time per embedder, in arrival order.

    The embedder's fast tokenizer is shared by queries, ingest embedding and chunking, and is not safe to
    use from two threads at once (its truncation settings are mutated per call). First come, first
    served, and ingest takes one small slice per turn: a query arriving during a large ingest waits for
    one slice, and a stream of queries cannot starve an ingest either.
    """

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    @contextmanager
    def hold(self) -> Iterator[None]:
        me = threading.Event()
        with self._mu:
            self._waiters.append(me)
            if len(self._waiters) == 1:
                me.set()
        try:
            me.wait()
            yield
        finally:
            with self._mu:
                head = self._waiters[0] is me
                self._waiters.remove(me)
                if head and self._waiters:
                    self._waiters[0].set()


_GATES: "weakref.WeakKeyDictionary[Any, EmbedGate]" = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def embed_gate(embedder: Any) -> EmbedGate:
    """The gate of an embedder object (shared by every index that uses it in this process)."""
    with _GATES_LOCK:
        gate = _GATES.get(embedder)
        if gate is None:
            gate = _GATES[embedder] = EmbedGate()
        return gate


class Generation(NamedTuple):
    """What one search reads: the store, the dense index and their manifest, taken together."""

    store: Store
    dense: DenseIndex
    manifest: dict

    @property
    def number(self) -> int:
        return int(self.manifest.get("generation", 0))


class _LockedCache:
    """The embedding cache's one SQLite connection, used by one thread at a time (searches read it while
    an ingest writes it)."""

    def __init__(self, cache: EmbeddingCache, lock: threading.Lock):
        self._cache, self._lock = cache, lock

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._cache.get_many(hashes)

    def put_many(self, hashes: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            self._cache.put_many(hashes, vectors)


class RetrievalIndex:
    """See the module docstring. Thread- and process-safe: mutations hold a thread lock and the directory's
    writer lock (retrieval.generations.writer_lock); reads use the current generation."""

    def __init__(self, path: Path, manifest: dict, store: Store, dense: DenseIndex, config: IndexConfig,
                 embedder: Embedder | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.store = store
        self.dense = dense
        self.config = config
        self.embedder_name: str = manifest["embedder"]["name"]
        self.dim: int = int(manifest["embedder"]["dim"])
        self._embedder = embedder
        self._cache: EmbeddingCache | None = None
        self._cache_lock = threading.Lock()
        self._lock = threading.RLock()  # writers of this object (the directory's writer lock is taken too)
        self._swap = threading.Lock()  # held only to read or replace (store, dense, manifest) together
        self._refresh_lock = threading.Lock()  # one refresh() at a time
        self.build_summary: dict[str, Any] = {}

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | Path, embedder: str | None = None, verify: bool = True,
             device: str | None = None, mmap: bool = False) -> "RetrievalIndex":
        """Open an index. `embedder`: the model the caller intends to query with; a different one than
        the index was built with is an error. `verify`: check file checksums (sizes always)."""
        d = Path(index_dir)
        man = read_manifest(d)
        if embedder is not None and canonical_name(embedder) != man["embedder"]["name"]:
            raise RetrievalError(
                f"index {str(d)!r} was built with embedder {man['embedder']['name']!r} "
                f"(dim {man['embedder']['dim']}), not {embedder!r}: its vectors are meaningless to that model. "
                f"Query with {man['embedder']['name']!r} or rebuild the index with the new embedder")
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
        cfg = IndexConfig(**man["config"])
        if device is not None:
            cfg = cfg.model_copy(update={"device": device})
        store = Store(d / man["store"])
        try:
            store.con.execute("SELECT row FROM chunks LIMIT 1").fetchall()  # reads the schema: a cheap probe
        except sqlite3.DatabaseError as e:
            store.close()
            raise RetrievalError(f"index {str(d)!r} is damaged: {d / man['store']} is not a readable SQLite "
                                 f"store ({e}); {rebuild}") from None
        fa = man["faiss"]
        params = dict(fa["params"], use_gpu=cfg.use_gpu)
        try:
            dense = DenseIndex.load(d, fa["type"], man["embedder"]["dim"], params, fa["files"], mmap=mmap)
        except (RuntimeError, ValueError, OSError) as e:
            store.close()
            why = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise RetrievalError(f"index {str(d)!r} is damaged: its FAISS files ({', '.join(fa['files'])}) cannot "
                                 f"be read ({why}); {rebuild}") from None
        return cls(d, man, store, dense, cfg)

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
        embedder = shared_embedder(cfg.embedder, cfg.device, cfg.batch_size, cfg.max_seq_length)
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
        """Write a fresh generation from chunks and their vectors (`build`, `from_vectors`); a prebuilt
        `dense` has ids that are the rows 1..n the store assigns. `corpus`: {path, root} of the corpus the
        chunks came from, kept in the manifest."""
        out.mkdir(parents=True, exist_ok=True)
        with writer_lock(out):
            return cls._write_new_locked(out, chunks, vectors, cfg, embedder_name, embedder, hashes, dense, corpus)

    @classmethod
    def _write_new_locked(cls, out: Path, chunks: list[Chunk], vectors: np.ndarray, cfg: IndexConfig,
                          embedder_name: str, embedder: Embedder | None, hashes: list[str] | None,
                          dense: DenseIndex | None, corpus: dict | None = None) -> "RetrievalIndex":
        old_gen = 0
        try:
            old_gen = int(read_manifest(out).get("generation", 0))
        except RetrievalError:
            pass
        gen = max(old_gen, max_gen_on_disk(out)) + 1
        dim = int(vectors.shape[1])
        hashes = hashes or [content_hash(embedder_name, _embed_text(c)) for c in chunks]
        store_name = f"store.g{gen}.sqlite"
        tmp = out / (store_name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        st = Store(tmp, create=True)
        rows = np.asarray(st.add_chunks(chunks, hashes), dtype="int64")
        st.close()
        fsync_rename(tmp, out / store_name)
        crash_point("after_store")
        if dense is None:
            kind = choose_type(cfg.index_type, len(chunks))
            params = make_params(kind, dim, len(chunks), cfg)
            rng = np.random.default_rng(0)
            train = vectors[rng.permutation(len(vectors))[:200_000]] if kind.startswith("ivf") else None
            dense = DenseIndex.create(kind, dim, dict(params, use_gpu=cfg.use_gpu), cfg.shards, train)
            dense.add(vectors, rows)
        else:
            kind, params = dense.kind, {k: v for k, v in dense.params.items() if k != "use_gpu"}
        dense_files = dense.save(out, gen)
        crash_point("after_dense")
        man = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": gen,
               "embedder": {"name": embedder_name, "dim": dim},
               "faiss": {"type": kind, "params": params, "shards": len(dense.shards), "files": dense_files,
                         "metric": "inner_product"},
               "store": store_name, "config": cfg.model_dump(mode="json"),
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if corpus:
            man["corpus"] = corpus
        write_manifest(out, man, len(chunks), len({c.doc_id for c in chunks}), dense)
        sweep(out, man)
        return cls(out, man, Store(out / store_name), dense, cfg, embedder)

    @property
    def corpus_root(self) -> str | None:
        """The directory document ids are relative to (None for an index built from Documents)."""
        return (self.manifest.get("corpus") or {}).get("root")

    # ---- embedding ----------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = shared_embedder(self.config.embedder, self.config.device, self.config.batch_size,
                                             self.config.max_seq_length)
        return self._embedder

    @property
    def cache(self) -> EmbeddingCache:
        with self._cache_lock:
            if self._cache is None:
                self._cache = EmbeddingCache(self.path / CACHE_FILE, self.dim)
            return self._cache

    def embed(self, texts: list[str], bulk: bool = False) -> np.ndarray:
        """float32, L2-normalised embeddings from the index's own embedder. `bulk` (ingest): embedded in
        slices of about EMBED_SLICE_CHARS, each one turn at the embedder gate, so queries get in between."""
        texts = list(texts)
        gate = embed_gate(self.embedder)
        parts = []
        for piece in (_slices(texts, EMBED_SLICE_CHARS) if bulk else [texts]):
            with gate.hold():
                parts.append(self.embedder.encode(piece))
        v = np.concatenate(parts) if len(parts) > 1 else parts[0] if parts else self.embedder.encode([])
        if v.shape[1] != self.dim:
            raise RetrievalError(f"embedder {self.embedder_name!r} now yields dimension {v.shape[1]} but the index "
                                 f"at {str(self.path)!r} holds dimension {self.dim}; rebuild the index")
        return v

    # ---- generations --------------------------------------------------------------------------
    def _current(self) -> Generation:
        with self._swap:
            return Generation(self.store, self.dense, self.manifest)

    @contextmanager
    def reading(self) -> Iterator[Generation]:
        """The current (store, dense, manifest), read together (a write swapping them meanwhile cannot hand
        a search one generation's store and another's vectors) and kept open until the block ends."""
        with self._swap:
            gen = Generation(self.store, self.dense, self.manifest)
            gen.store.pin()
        try:
            yield gen
        finally:
            gen.store.unpin()

    def _install(self, store: Store, dense: DenseIndex, manifest: dict) -> None:
        """Publish a generation. The old store closes once the searches that started on it are done."""
        with self._swap:
            old = self.store
            self.store, self.dense, self.manifest = store, dense, manifest
        self._forget_filters()
        if old is not store:
            old.retire()

    def refresh(self) -> bool:
        """Pick up a generation another process (or another index object) committed since this one was
        opened or last refreshed; True when one was installed. Costs one stat of the manifest when nothing
        changed, so a long-lived reader (the gateway) may call it before every search. Never waits for a
        write of this object: a refresh that finds another in progress leaves it to that one."""
        try:
            st = (self.path / MANIFEST).stat()
        except OSError:
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self.__dict__.get("_manifest_sig") or not self._refresh_lock.acquire(blocking=False):
            return False
        try:
            current = self._current().number
            if int(read_manifest(self.path).get("generation", 0)) <= current:
                self._manifest_sig = sig
                return False
            fresh = RetrievalIndex.open(self.path, verify=False)
            # compare and swap: a write of this object may have installed this generation, or a newer one, meanwhile
            with self._swap:
                old = None
                if fresh.manifest.get("generation", 0) > self.manifest.get("generation", 0):
                    old = self.store
                    self.store, self.dense, self.manifest = fresh.store, fresh.dense, fresh.manifest
            if old is None:
                fresh.store.close()
                return False
            self._forget_filters()
            old.retire()
            self._manifest_sig = sig
            return True
        except RetrievalError:  # a manifest being replaced right now, or damage: the next call looks again
            return False
        finally:
            self._refresh_lock.release()

    def health(self) -> dict[str, Any]:
        """What the index holds, from the manifest in memory: never waits for a search or a write."""
        man = self._current().manifest
        counts = man.get("counts", {})
        return {"chunks": counts.get("chunks"), "documents": counts.get("documents"),
                "generation": man.get("generation"), "embedder": self.embedder_name,
                "index_type": man.get("faiss", {}).get("type")}

    # ---- search -------------------------------------------------------------------------------
    def search(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
               deadline_at: float | None = None, rerank: Reranker | None = None) -> list[Hit]:
        return self.search_batch([query], k, mode, filter, deadline_at, rerank)[0]

    def search_batch(self, queries: list[str], k: int = 5, mode: str = "hybrid",
                     filter: dict | None = None, deadline_at: float | None = None,
                     rerank: Reranker | None = None) -> list[list[Hit]]:
        """Hits per query. `deadline_at` (time.monotonic()): past it the search stops, between stages and
        inside its SQLite queries, with TimeoutError. `rerank` (retrieval.rerank.Reranker): the search's
        first `rerank.candidates` hits, filters already applied, are re-scored by the cross-encoder and its
        best k are returned."""
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
        dense: list[list[tuple[int, float]]] = [[] for _ in queries]
        sparse: list[list[tuple[int, float]]] = [[] for _ in queries]
        vectors = self.embed(queries) if mode in ("dense", "hybrid") else None
        with self.reading() as gen, deadline(deadline_at):
            if vectors is not None:
                _check_deadline(deadline_at)
                dense = self._dense_rows(vectors, ncand, flt, gen=gen)
            if mode in ("bm25", "hybrid"):
                _check_deadline(deadline_at)
                sparse = [gen.store.bm25(q, ncand, flt) for q in queries]
            if mode == "dense":
                ranked = dense
            elif mode == "bm25":
                ranked = sparse
            else:
                ranked = [fuse(self.config.fusion, d, s, self.config.dense_weight, self.config.rrf_k)
                          for d, s in zip(dense, sparse)]
            hits = self._hits([r[:want] for r in ranked], gen.store)
        if rerank is None:
            return hits
        _check_deadline(deadline_at)  # the cross-encoder pass itself cannot be stopped half-way
        return rerank.rerank_batch(queries, hits, k)

    def search_vectors(self, vectors: np.ndarray, k: int, filter: dict | None = None) -> list[list[Hit]]:
        """Dense search with precomputed (normalised) query vectors, batched."""
        k = _check_k(k)
        v = np.atleast_2d(np.asarray(vectors, dtype="float32"))
        if v.shape[1] != self.dim:
            raise RetrievalError(f"query vectors have dimension {v.shape[1]}, the index holds {self.dim}")
        with self.reading() as gen:
            return self._hits(self._dense_rows(v, k, normalize_filter(filter), gen=gen), gen.store)

    def _dense_rows(self, vecs: np.ndarray, k: int, flt: dict, partition: tuple[int, int] | None = None,
                    gen: Generation | None = None) -> list[list[tuple[int, float]]]:
        """Best-first (row, score) lists. `partition=(n, i)`: this dense index holds only rows with
        row % n == i (a shard), so filtered candidates are restricted to those rows too. `gen`: the
        generation to read (default: the current one, for a caller no write runs beside)."""
        gen = gen or self._current()
        dense = gen.dense
        if not flt:
            d, i = dense.search(vecs, k)
            return [[(int(r), float(s)) for r, s in zip(ri, di) if r >= 0] for di, ri in zip(d, i)]
        fkey = json.dumps(flt, sort_keys=True, default=str)
        allowed = self._allowed_rows(flt, fkey, gen)
        if partition is not None:
            allowed = allowed[allowed % partition[0] == partition[1]]
        if len(allowed) == 0:
            return [[] for _ in range(len(vecs))]
        if len(allowed) <= EXACT_FILTER_LIMIT:
            exact = self._exact(vecs, allowed, k, (gen.number, fkey, partition), gen.store)
            if exact is not None:
                return exact
        want = min(k, len(allowed))
        for widen in (1, 4, 16, 64):
            d, i = dense.search(vecs, k, allowed=allowed, widen=widen)
            if dense.kind == "flat" or all(int((ri >= 0).sum()) >= want for ri in i):
                break
        return [[(int(r), float(s)) for r, s in zip(ri, di) if r >= 0] for di, ri in zip(d, i)]

    def _forget_filters(self) -> None:
        """A new store generation: memoised filter rows and vectors describe the old one."""
        self.__dict__.pop("_allowed_cache", None)
        self.__dict__.pop("_exact_cache", None)

    def _allowed_rows(self, flt: dict, fkey: str, gen: Generation) -> np.ndarray:
        """Rows matching a filter (`fkey`: its canonical JSON), memoised per store generation (keyed by
        its number, so a search still running on an older generation cannot memoise stale rows for the
        new one): resolving a filter scans the metadata (O(chunks)), and the same few tenant filters
        repeat on every query."""
        cache = self.__dict__.setdefault("_allowed_cache", {})
        key = (gen.number, fkey)
        got = cache.get(key)
        if got is None:
            got = gen.store.rows_matching(flt)
            while len(cache) >= 64:
                cache.pop(next(iter(cache)), None)
            cache[key] = got
        return got

    def _exact(self, vecs: np.ndarray, rows: np.ndarray, k: int, key: tuple, store: Store):
        """Exact inner products against the cached vectors of `rows` (None if any vector is missing).

        The (rows, vectors) matrix is memoised per generation, filter and shard partition (`key`):
        gathering 10k vectors from the SQLite cache costs tens of ms, the product itself well under one,
        and a tenant's filter repeats on every query of that tenant."""
        memo = self.__dict__.setdefault("_exact_cache", {})
        got_memo = memo.pop(key, None)
        if got_memo is None:
            hashes = store.hashes_for_rows(rows)
            got = _LockedCache(self.cache, self._cache_lock).get_many(list(set(hashes.values())))
            if any(h not in got for h in hashes.values()):
                return None
            rows = np.fromiter(hashes.keys(), dtype="int64")
            got_memo = (rows, np.stack([got[hashes[int(r)]] for r in rows]).astype("float32", copy=False))
        memo[key] = got_memo  # most recently used last
        while len(memo) > EXACT_MEMO_ENTRIES:
            memo.pop(next(iter(memo)), None)
        rows, mat = got_memo
        scores = vecs @ mat.T
        out = []
        for s in scores:
            top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
            top = top[np.argsort(-s[top], kind="stable")]
            out.append([(int(rows[j]), float(s[j])) for j in top])
        return out

    def _hits(self, ranked: list[list[tuple[int, float]]], store: Store) -> list[list[Hit]]:
        chunks = store.get_rows({r for lst in ranked for r, _ in lst})
        # a row the store no longer has was deleted: it never comes back, whatever FAISS says
        return [[Hit(chunks[r], s) for r, s in lst if r in chunks] for lst in ranked]

    # ---- reading (each read pins the generation it reads: a write meanwhile cannot close it) -----
    def get(self, chunk_ids: list[str]) -> list[Chunk]:
        """Chunks by id, in the order asked; ids not in the index are left out."""
        with self.reading() as gen:
            found = gen.store.get_chunk_ids(list(chunk_ids))
        return [found[c] for c in chunk_ids if c in found]

    def chunk_ids(self) -> list[str]:
        with self.reading() as gen:
            return gen.store.chunk_ids()

    def chunks_for_doc(self, doc_id: str) -> list[Chunk]:
        with self.reading() as gen:
            return gen.store.chunks_for_doc(doc_id)

    def doc_ids(self) -> list[str]:
        with self.reading() as gen:
            return gen.store.doc_ids()

    def __len__(self) -> int:
        with self.reading() as gen:
            return gen.store.count()

    def stats(self) -> dict[str, Any]:
        with self.reading() as gen:
            m = gen.manifest
            return {"path": str(self.path), "embedder": self.embedder_name, "dim": self.dim,
                    "index_type": m["faiss"]["type"], "faiss_params": m["faiss"]["params"],
                    "shards": m["faiss"]["shards"], "generation": gen.number, "chunks": gen.store.count(),
                    "documents": gen.store.doc_count(), "vectors": gen.dense.ntotal,
                    "tombstones": len(gen.dense.tombstones), "created": m.get("created"),
                    "updated": m.get("updated"), "bytes": sum(f["bytes"] for f in m["files"].values())}

    # ---- live updates -------------------------------------------------------------------------
    def add_documents(self, docs: list[Document]) -> list[str]:
        """Chunk, embed and add documents; a doc_id already in the index is replaced. Persisted.

        Chunking and embedding run before any lock is taken (searches go on meanwhile); the write itself
        is one generation swap. Metadata is checked first, so bad input fails before any work."""
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
        cache = _LockedCache(self.cache, self._cache_lock)
        vectors, _ = embed_with_cache(texts, lambda t: self.embed(t, bulk=True), cache, self.embedder_name,
                                      self.dim)
        hashes = [content_hash(self.embedder_name, t) for t in texts]
        replace = [d.doc_id for d in docs]

        def mutate(st: Store, dense: DenseIndex):
            old = st.delete_docs(replace)
            dense.remove(old)
            rows = np.asarray(st.add_chunks(chunks, hashes), dtype="int64")
            dense.add(vectors, rows)

        with self._writing():
            self._commit(mutate)
        return [c.chunk_id for c in chunks]

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of these documents; returns how many chunks went. Persisted."""
        removed: list[int] = []

        def mutate(st: Store, dense: DenseIndex):
            removed.extend(st.delete_docs(list(doc_ids)))
            dense.remove(removed)

        with self._writing():
            if not self.store.rows_for_docs(list(doc_ids)):  # on the latest generation, not a stale one
                return 0
            self._commit(mutate)
        return len(removed)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writer locks (threads, then processes) with this object moved to the latest generation,
        so a write lands on top of whatever another writer committed since this index was opened."""
        with self._lock, writer_lock(self.path):
            if read_manifest(self.path).get("generation") != self.manifest.get("generation"):
                fresh = RetrievalIndex.open(self.path, verify=False)
                self._install(fresh.store, fresh.dense, fresh.manifest)
            yield

    def _commit(self, mutate: Callable[[Store, DenseIndex], None]) -> None:
        """Write the next generation; only inside _writing(), which holds the locks and has reloaded.

        `mutate` changes copies of the store and of the FAISS index; the published generation is never
        touched, so searches run on during the whole save, and a failure leaves nothing to undo."""
        with self._lock:
            man = self.manifest
            gen = max(int(man["generation"]), max_gen_on_disk(self.path)) + 1
            store_name = f"store.g{gen}.sqlite"
            tmp = self.path / (store_name + ".tmp")
            if tmp.exists():
                tmp.unlink()
            self.store.copy_to(tmp)
            new_store = Store(tmp)
            try:
                dense = _copy_dense(self.dense)
                mutate(new_store, dense)
            finally:
                new_store.close()
            fsync_rename(tmp, self.path / store_name)
            crash_point("after_store")
            dense = self._maybe_compact(Store(self.path / store_name), dense)
            files = dense.save(self.path, gen)
            crash_point("after_dense")
            new = dict(man, generation=gen, store=store_name,
                       faiss=dict(man["faiss"], files=files),
                       updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            final = Store(self.path / store_name)
            write_manifest(self.path, new, final.count(), final.doc_count(), dense)
            self._install(final, dense, new)
            sweep(self.path, new)

    def _maybe_compact(self, st: Store, dense: DenseIndex) -> DenseIndex:
        """HNSW cannot remove vectors: rebuild it from cached vectors once tombstones pass 20%."""
        try:
            if dense.kind != "hnsw" or len(dense.tombstones) <= 0.2 * max(1, dense.ntotal):
                return dense
            rows, hashes = st.all_rows_and_hashes()
            got = _LockedCache(self.cache, self._cache_lock).get_many(list(set(hashes)))
            if any(h not in got for h in hashes):
                return dense
            vecs = np.stack([got[h] for h in hashes]) if hashes else np.zeros((0, self.dim), "float32")
            new = DenseIndex.create("hnsw", self.dim, dense.params, len(dense.shards), None)
            new.add(vecs, rows)
            return new
        finally:
            st.close()

    def close(self) -> None:
        self.store.close()
        if self._cache is not None:
            self._cache.close()


# ---- helpers ----------------------------------------------------------------------------------
def _rebuild_hint(d: Path, man: dict) -> str:
    """How to rebuild the index at `d`: from the corpus directory it was built from, when it records one."""
    corpus = (man.get("corpus") or {}).get("path")
    return f"rebuild it: raft index build {corpus or 'CORPUS'} --out {d}"


def _copy_dense(dense: DenseIndex) -> DenseIndex:
    """A private copy of a DenseIndex for a write to change (memory: one more copy while it saves)."""
    import faiss

    return DenseIndex(dense.kind, dense.dim, dict(dense.params), [faiss.clone_index(s) for s in dense.shards],
                      set(dense.tombstones))


def _slices(texts: list[str], chars: int) -> Iterator[list[str]]:
    """Consecutive runs of texts of about `chars` characters together (at least one text each)."""
    run: list[str] = []
    size = 0
    for t in texts:
        if run and size + len(t) > chars:
            yield run
            run, size = [], 0
        run.append(t)
        size += len(t)
    if run:
        yield run


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
