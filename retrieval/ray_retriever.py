"""RayRetriever: an index served by Ray actors, an embedder pool and index shards.

Each shard actor opens the index directory and keeps, for every segment, the dense vectors of its
partition (row % N); BM25 runs on every shard restricted to the same partition with statistics from all
segments, so BM25 scores and inner products merge exactly: the merged result equals
`RetrievalIndex.search` on one process.
A query's vectors go from the embedder actor straight to the shards (an ObjectRef argument), and
shards return chunks with text, so one query is one embed call plus one parallel shard call.

Writes (add/delete) go through one writer actor that adds a segment (or tombstones); shards then
refresh, opening only the segments they have not seen. The index directory must be readable by every node (local disk for local Ray, shared storage
on a cluster reached with RAY_ADDRESS).
"""

from __future__ import annotations

import os
import time
from itertools import count
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.filters import normalize_filter
from retrieval.fusion import fuse
from retrieval.types import Chunk, Document, Hit


class ShardServer:
    """One shard of an index (wrapped as a Ray actor by RayRetriever)."""

    def __init__(self, index_dir: str, shard: int, num_shards: int, embedder: str | None = None):
        self.index_dir, self.shard, self.num_shards, self.embedder = index_dir, shard, num_shards, embedder
        _limit_threads()
        self._load()

    def _load(self) -> None:
        from retrieval.index import RetrievalIndex

        self.idx = RetrievalIndex.open(self.index_dir, embedder=self.embedder, verify=False,
                                       partition=(self.num_shards, self.shard))
        self.generation = self.idx.manifest["generation"]

    def reload(self) -> int:
        """Follow the index's latest generation: only segments this shard has not seen are opened."""
        self.idx.refresh(force=True)  # called after a committed write: never skip it
        self.generation = self.idx.manifest["generation"]
        return self.generation

    def search(self, vectors: np.ndarray | None, queries: list[str], k: int, mode: str, flt: dict,
               ncand: int, budget_s: float | None = None) -> list[dict]:
        """Per query: {"dense": [(row, score, chunk)], "bm25": [...]}, restricted to this shard.
        `budget_s`: seconds the caller still waits, counted from the call's arrival here (a time budget,
        not a clock reading, because the caller may be on another node); past it the search stops, inside
        a SQLite statement or between segments, and raises TimeoutError."""
        from retrieval.store import deadline

        at = None if budget_s is None else time.monotonic() + budget_s
        idx = self.idx
        with idx.reading() as snap, deadline(at):
            out = idx.candidates(snap, vectors, list(queries), ncand, mode, flt, at, fused=False)
            rows = {r for o in out for lst in o.values() for r, _ in lst}
            chunks = snap.get_rows(rows)
        return [{key: [(r, s, chunks[r].to_dict()) for r, s in lst if r in chunks] for key, lst in o.items()}
                for o in out]

    def count(self) -> int:
        return len(self.idx)

    def chunks(self) -> int:
        return len(self.idx)

    def chunks_for_doc(self, doc_id: str) -> list[dict]:
        return [c.to_dict() for c in self.idx.chunks_for_doc(doc_id)]  # every shard holds the whole store


def _limit_threads() -> int:
    """One query is small: OpenMP/torch thread pools only add wake-up latency and oversubscribe the
    CPUs an actor shares with the others (RAFT_ACTOR_THREADS overrides). Returns the thread count."""
    n = int(os.environ.get("RAFT_ACTOR_THREADS", "1"))
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except Exception:
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except Exception:
        pass
    return n


class EmbedServer:
    """Query embeddings with an index's embedder (wrapped as a Ray actor by RayRetriever). It reads the
    manifest only (model, settings, dimension), never the segments: an embedder actor holds the model and
    none of the index (at 1M chunks, 1.5 GB of vectors and the BM25 matrices per actor otherwise)."""

    def __init__(self, index_dir: str, embedder: str | None = None, backend: str = "auto"):
        threads = _limit_threads()
        from retrieval.config import IndexConfig
        from retrieval.embedders import embedder_for
        from retrieval.index import check_embedder, read_manifest

        man = read_manifest(index_dir)
        check_embedder(index_dir, man, embedder)
        cfg = IndexConfig(**man["config"])
        self.index_dir, self.dim = index_dir, int(man["embedder"]["dim"])
        self.embedder = embedder_for(cfg)
        # ONNX Runtime where the model allows it: the same vectors, 2-3x faster per query on CPU
        self._backend = self.embedder.use_backend(backend, threads)
        self.embed(["warm up"])  # load the model now, not on the first user query

    def embed(self, texts: list[str]) -> np.ndarray:
        from retrieval.index import check_dim

        return check_dim(self.embedder.encode(list(texts)), self.embedder.name, self.dim, self.index_dir)

    def backend(self) -> str:
        return self._backend


class WriterServer:
    """The one writer of a RayRetriever: keeps the index open between writes (a write moves it to the
    latest generation first) and merges segments in the background."""

    def __init__(self, index_dir: str, embedder: str | None = None):
        from retrieval.index import RetrievalIndex

        self.idx = RetrievalIndex.open(index_dir, embedder=embedder, verify=False)

    def add(self, docs: list[dict]) -> list[str]:
        return self.idx.add_documents([Document(**d) for d in docs])

    def delete(self, doc_ids: list[str]) -> int:
        return self.idx.delete_documents(doc_ids)


class RerankServer:
    """A cross-encoder (wrapped as a Ray actor by RayRetriever): the rerank stage has its own actor pool, so
    it scales (and takes GPUs) apart from the shards. It gets passages as text and returns an order."""

    def __init__(self, config: dict):
        from retrieval.rerank import Reranker

        _limit_threads()
        self.reranker = Reranker.from_config(config).load()
        self.reranker.score_pairs([("warm up", "warm up")])  # the first real query pays no start-up

    def rank(self, queries: list[str], texts: list[list[str]], k: int) -> list[list[tuple[int, float]]]:
        return self.reranker.rank_texts(queries, texts, k)


class RayRetriever:
    """Search an index through Ray actors; same search/add/delete methods as RetrievalIndex.

    With `rerank` (a RerankConfig naming a model) a pool of `num_rerankers` cross-encoder actors re-scores
    the merged first `rerank.candidates` hits of each search (filters were applied by the shards) and keeps
    the best k; each search call may turn it off (`rerank=False`)."""

    def __init__(self, index_dir: str, num_shards: int = 2, num_embedders: int = 1, embedder: str | None = None,
                 shard_cpus: float = 0.25, embedder_cpus: float = 0.5, embedder_gpus: float = 0.0,
                 embed_backend: str | None = None, rerank: Any = None, num_rerankers: int = 1,
                 reranker_cpus: float = 1.0, reranker_gpus: float = 0.0):
        """`embed_backend`: auto | onnx | torch for the embedder actors (default: env RAFT_EMBED_BACKEND,
        else auto); see `Embedder.use_backend`. `rerank`: a RerankConfig (or its dict); reranking is off
        while it names no model."""
        import ray

        from retrieval.index import read_manifest

        if num_shards < 1 or num_embedders < 1 or num_rerankers < 1:
            raise RetrievalError(f"num_shards ({num_shards}), num_embedders ({num_embedders}) and num_rerankers "
                                 f"({num_rerankers}) must be >= 1")
        self.rerank_config = rerank_config(rerank)
        self.index_dir = os.path.abspath(str(index_dir))
        man = read_manifest(self.index_dir)  # fail fast, in the caller, on a bad directory
        self.manifest = man
        self.embedder_name, self.dim = man["embedder"]["name"], int(man["embedder"]["dim"])
        from retrieval.embedders import canonical_name

        if embedder is not None and canonical_name(embedder) != self.embedder_name:
            raise RetrievalError(f"index {self.index_dir} was built with embedder {self.embedder_name!r}, not "
                                 f"{embedder!r}; use the index's embedder or rebuild the index")
        from retrieval.config import IndexConfig

        self.config = IndexConfig(**man["config"])
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
        self._ray = ray
        # an actor asking for a GPU the cluster lacks is never scheduled, and the ray.get below would wait on it
        # for ever: say so instead
        gpus = ray.cluster_resources().get("GPU", 0)
        need = embedder_gpus * num_embedders + (reranker_gpus * num_rerankers if self.rerank_config.model else 0)
        if need > gpus:
            raise RetrievalError(f"embedder_gpus={embedder_gpus:g} x {num_embedders} embedder(s) and reranker_gpus="
                                 f"{reranker_gpus:g} x {num_rerankers} reranker(s) ask for {need:g} GPU(s), but the "
                                 f"Ray cluster has {gpus:g}; set them to 0 to run on CPUs, or add GPU nodes")
        self.num_shards = num_shards
        shard_cls = ray.remote(num_cpus=shard_cpus)(ShardServer)
        emb_cls = ray.remote(num_cpus=embedder_cpus, num_gpus=embedder_gpus)(EmbedServer)
        self._writer_cls = ray.remote(num_cpus=0)(WriterServer)
        self._writer = None
        self.shards = [shard_cls.remote(self.index_dir, i, num_shards, embedder) for i in range(num_shards)]
        backend = embed_backend or os.environ.get("RAFT_EMBED_BACKEND", "auto")
        self.embedders = [emb_cls.remote(self.index_dir, embedder, backend) for _ in range(num_embedders)]
        self.rerankers = []
        if self.rerank_config.model:
            rr_cls = ray.remote(num_cpus=reranker_cpus, num_gpus=reranker_gpus)(RerankServer)
            # the model path as this process sees it: every node reads the same path (as the index directory)
            cfg = self.rerank_config.model_copy(update={"model": _abs_if_path(self.rerank_config.model)})
            self.rerankers = [rr_cls.remote(cfg.model_dump()) for _ in range(num_rerankers)]
        self._embedder_arg = embedder
        self._rr = count()
        ray.get([s.count.remote() for s in self.shards] + [e.embed.remote(["x"]) for e in self.embedders]
                + [r.rank.remote([], [], 1) for r in self.rerankers])

    def embed_backends(self) -> list[str]:
        """What each embedder actor embeds queries with (`onnx` or `torch`)."""
        return self._ray.get([e.backend.remote() for e in self.embedders])

    # ---- search -------------------------------------------------------------------------------
    def _use_rerank(self, rerank: bool | None) -> bool:
        if rerank and not self.rerankers:
            raise RetrievalError("rerank was asked for, but this RayRetriever has no reranker: give it "
                                 "rerank=RerankConfig(model=...)")
        return bool(self.rerankers) if rerank is None else bool(rerank)

    def _dispatch(self, queries: list[str], k, mode: str, filter: dict | None, budget_s: float | None = None,
                  rerank: bool = False):
        """Shard search refs; with `rerank` the merge keeps max(k, rerank.candidates) hits for the reranker."""
        from retrieval.index import MODES, _check_k

        k = _check_k(k)
        if mode not in MODES:
            raise RetrievalError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
        flt = normalize_filter(filter)
        if rerank:
            k = max(k, self.rerank_config.candidates)
        ncand = max(k, self.config.candidates) if mode == "hybrid" else k
        vec_ref = None
        if mode in ("dense", "hybrid"):
            emb = self.embedders[next(self._rr) % len(self.embedders)]
            vec_ref = emb.embed.remote(list(queries))
        refs = [s.search.remote(vec_ref, list(queries), k, mode, flt, ncand, budget_s) for s in self.shards]
        return refs, k, mode, ncand

    def _merge(self, parts: list[list[dict]], k: int, mode: str, ncand: int) -> list[list[Hit]]:
        out = []
        for qi in range(len(parts[0]) if parts else 0):
            lists, chunks = {}, {}
            for key in ("dense", "bm25"):
                merged = [x for p in parts for x in p[qi][key]]
                merged.sort(key=lambda x: (-x[1], x[0]))  # ties by row: the order one unsharded index gives
                merged = merged[:ncand]
                lists[key] = [(r, s) for r, s, _ in merged]
                chunks.update({r: c for r, _, c in merged})
            if mode == "dense":
                ranked = lists["dense"]
            elif mode == "bm25":
                ranked = lists["bm25"]
            else:
                ranked = fuse(self.config.fusion, lists["dense"], lists["bm25"], self.config.dense_weight,
                              self.config.rrf_k)
            out.append([Hit(Chunk.from_dict(chunks[r]), s) for r, s in ranked[:k]])
        return out

    def _rank_ref(self, queries: list[str], hits: list[list[Hit]], k: int):
        from retrieval.rerank import pair_text

        actor = self.rerankers[next(self._rr) % len(self.rerankers)]
        return actor.rank.remote(list(queries), [[pair_text(h.chunk) for h in lst] for lst in hits], k)

    @staticmethod
    def _reorder(hits: list[list[Hit]], ranked: list[list[tuple[int, float]]]) -> list[list[Hit]]:
        return [[Hit(lst[i].chunk, s) for i, s in order] for lst, order in zip(hits, ranked)]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
               rerank: bool | None = None) -> list[Hit]:
        return self.search_batch([query], k, mode, filter, rerank)[0]

    def search_batch(self, queries: list[str], k: int = 5, mode: str = "hybrid",
                     filter: dict | None = None, rerank: bool | None = None) -> list[list[Hit]]:
        """`rerank`: None reranks when this retriever has rerankers; True requires them; False skips them."""
        if not queries:
            return []
        use = self._use_rerank(rerank)
        refs, want, mode, ncand = self._dispatch(queries, k, mode, filter, rerank=use)
        hits = self._merge(self._ray.get(refs), want, mode, ncand)
        if not use:
            return hits
        return self._reorder(hits, self._ray.get(self._rank_ref(queries, hits, k)))

    async def asearch(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
                      timeout: float | None = None, rerank: bool | None = None) -> list[Hit]:
        """`timeout` (seconds): the shards get it as their budget and stop there; a caller that stops
        waiting first cancels the shard tasks, so no shard keeps searching for a caller that is gone."""
        return (await self.asearch_timed(query, k, mode, filter, timeout, rerank))[0]

    async def asearch_timed(self, query: str, k: int = 5, mode: str = "hybrid", filter: dict | None = None,
                            timeout: float | None = None,
                            rerank: bool | None = None) -> tuple[list[Hit], dict[str, float]]:
        """`asearch`, and the seconds its stages took: {"search": ..., "rerank": ...} (rerank when it ran)."""
        from retrieval.index import _check_k

        if timeout is not None and timeout <= 0:
            raise TimeoutError("the search passed its deadline before it started")
        use = self._use_rerank(rerank)
        t0 = time.perf_counter()
        refs, want, mode, ncand = self._dispatch([query], k, mode, filter, timeout, rerank=use)
        parts = await self._gather(refs)
        hits = self._merge(list(parts), want, mode, ncand)
        timings = {"search": time.perf_counter() - t0}
        if use:
            t0 = time.perf_counter()
            ranked = await self._gather([self._rank_ref([query], hits, _check_k(k))])
            hits = self._reorder(hits, ranked[0])
            timings["rerank"] = time.perf_counter() - t0
        return hits[0], timings

    async def _gather(self, refs: list) -> list:
        """Await actor calls; a caller that stops waiting cancels them (no actor works for a caller that is
        gone), and a shard that stopped at its time budget is a TimeoutError here."""
        import asyncio

        try:
            return list(await asyncio.gather(*refs))
        except (asyncio.CancelledError, TimeoutError):
            for ref in refs:
                try:
                    self._ray.cancel(ref)
                except Exception:  # already finished, or the actor is gone
                    pass
            raise
        except self._ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, TimeoutError):  # the shard stopped at its budget
                raise TimeoutError(str(e.cause)) from None
            raise

    def embed(self, texts: list[str]) -> np.ndarray:
        emb = self.embedders[next(self._rr) % len(self.embedders)]
        return self._ray.get(emb.embed.remote(list(texts)))

    def search_vectors(self, vectors: np.ndarray, k: int, filter: dict | None = None) -> list[list[Hit]]:
        from retrieval.index import _check_k

        k = _check_k(k)
        v = np.atleast_2d(np.asarray(vectors, dtype="float32"))
        refs = [s.search.remote(v, [""] * len(v), k, "dense", normalize_filter(filter), k) for s in self.shards]
        return self._merge(self._ray.get(refs), k, "dense", k)

    # ---- writes -------------------------------------------------------------------------------
    def _write(self, method: str, payload: Any):
        if self._writer is None:
            self._writer = self._writer_cls.remote(self.index_dir, self._embedder_arg)
        result = self._ray.get(getattr(self._writer, method).remote(payload))
        self._ray.get([s.reload.remote() for s in self.shards])
        return result

    def add_documents(self, docs: list[Document]) -> list[str]:
        return self._write("add", [d.__dict__ for d in docs])

    def delete_documents(self, doc_ids: list[str]) -> int:
        return self._write("delete", list(doc_ids))

    def chunks_for_doc(self, doc_id: str) -> list[Chunk]:
        """All chunks of a document, exactly (from the store, not a vector search)."""
        return [Chunk.from_dict(d) for d in self._ray.get(self.shards[0].chunks_for_doc.remote(doc_id))]

    def __len__(self) -> int:
        return int(self._ray.get(self.shards[0].chunks.remote()))

    def shutdown(self) -> None:
        for a in [*self.shards, *self.embedders, *self.rerankers, *([self._writer] if self._writer else [])]:
            try:
                self._ray.kill(a)
            except Exception:
                pass


def rerank_config(rerank: Any):
    """`rerank` (None, a dict, a RerankConfig or a subclass such as serve's RerankSettings) as a plain
    RerankConfig, which is what the reranker actors are built from (a subclass's own keys stay here)."""
    from retrieval.rerank import RerankConfig

    if isinstance(rerank, RerankConfig):
        return RerankConfig.model_validate(rerank.model_dump(include=set(RerankConfig.model_fields)))
    return RerankConfig.model_validate(rerank or {})


def _abs_if_path(name: str) -> str:
    return os.path.abspath(name) if os.path.exists(name) else name
