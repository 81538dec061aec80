"""The gateway's view of retrieval: one small async protocol, and adapters for what implements it.

- `IndexRetriever`: a `retrieval.index.RetrievalIndex` in the gateway process (searches run in worker
  threads, so the event loop keeps serving while FAISS, SQLite and the embedder work).
- `RayRetrieverAdapter`: `retrieval.ray_retriever.RayRetriever` (shard and embedder actors on Ray).
- `InMemoryRetriever` (serving/testing/memory_retriever.py): a dependency-free fake for tests and demos.

Every search returns the hits and how long the embed, search and rerank stages took (seconds; a stage is
left out when the backend cannot tell it apart or it did not run), which the gateway exports as Prometheus
histograms. `rerank=True` re-scores the search's first candidates with the server's cross-encoder
(serve.retrieval.rerank); a retriever opened without one rejects it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from retrieval.types import Document, Hit

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds ("embed", "search", "rerank")


@runtime_checkable
class Retriever(Protocol):
    async def asearch(self, query: str, k: int, mode: str, filter: Optional[dict],
                      deadline: Optional[float] = None, rerank: bool = False) -> SearchResult:
        """`deadline` (time.monotonic()): when the caller gives up; a search still running then stops.
        `rerank`: re-score the candidates with the cross-encoder (the gateway passes it only when true, so
        a retriever without a reranker need not take the argument)."""
        ...

    async def aadd(self, docs: Sequence[Document]) -> list[str]: ...

    async def adelete(self, doc_ids: Sequence[str]) -> int: ...

    async def adoc_tenants(self, doc_id: str) -> Optional[set]:
        """Tenants (metadata `tenant`, None for untagged chunks) of a document's chunks; None if unknown."""
        ...

    async def ahealth(self) -> dict[str, Any]:
        """Cached state: never waits for a search or a write."""
        ...

    def close(self) -> None: ...


def _tenants(chunks: Sequence[Any]) -> Optional[set]:
    if not chunks:
        return None
    return {(c.metadata or {}).get("tenant") for c in chunks}


@dataclass
class _Pending:
    key: tuple  # (k, mode, filter JSON, rerank): queries with the same key can share one search_batch
    tenant: str  # whose search it is (the filter's tenant), for fairness between tenants
    query: str
    future: asyncio.Future
    deadline: Optional[float]


class IndexRetriever:
    """A RetrievalIndex opened in this process.

    Concurrent requests are micro-batched: queries with the same k, mode and filter that arrive while
    searches run go together in a later `search_batch` (one query embedding batch of 16 costs far less
    than 16 single ones). Up to `threads` batches run at once, each in a worker thread on its own SQLite
    connection; a free thread takes the oldest batch of a tenant that has no search running, and the last
    free thread is kept for such a tenant, so one tenant's slow or numerous searches do not hold up the
    others. Each batch carries a deadline (the last of its callers'), at which the index stops it; a
    queued query whose caller gave up is dropped. Writes need no turn: the index swaps generations.
    """

    def __init__(self, index: Any, max_batch: int = 32, threads: int = 3, reranker: Any = None):
        self.index = index
        self.max_batch = max_batch
        self.threads = threads
        self.reranker = reranker  # retrieval.rerank.Reranker, used by searches that ask for it
        self._queue: list[_Pending] = []
        self._running: dict[str, int] = {}  # tenant -> batches in flight
        self._active = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="raft-search")
        # The index embeds inside search(); timing its `embed` (per thread) splits a search into the
        # embed and search stages the metrics report, without reaching into the index's internals.
        self._tls = threading.local()
        embed = index.embed

        def timed_embed(texts, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return embed(texts, *args, **kwargs)
            finally:
                self._tls.embed = getattr(self._tls, "embed", 0.0) + time.perf_counter() - t0

        index.embed = timed_embed
        if reranker is not None:  # the same for the rerank stage: its cross-encoder pass, per thread
            score = reranker.score_pairs

            def timed_score(pairs):
                t0 = time.perf_counter()
                try:
                    return score(pairs)
                finally:
                    self._tls.rerank = getattr(self._tls, "rerank", 0.0) + time.perf_counter() - t0

            reranker.score_pairs = timed_score

    @classmethod
    def open(cls, index_dir: str, embedder: Optional[str] = None, threads: int = 3,
             reranker: Any = None) -> "IndexRetriever":
        from retrieval.index import RetrievalIndex

        return cls(RetrievalIndex.open(index_dir, embedder=embedder), threads=threads, reranker=reranker)

    def _follow_writes(self) -> None:
        """Documents another process committed (`raft index add` beside a running gateway) are searched
        from the next request on: the index installs a newer generation when the manifest changed."""
        refresh = getattr(self.index, "refresh", None)
        if refresh is not None:
            refresh()

    def _search_batch(self, queries: list[str], k: int, mode: str, flt: Optional[dict],
                      deadline: Optional[float], rerank: bool = False):
        from retrieval.errors import RetrievalError

        if rerank and self.reranker is None:
            raise RetrievalError("rerank was asked for, but this index was opened without a reranker "
                                 "(serve.retrieval.rerank.model)")
        self._follow_writes()
        self._tls.embed = self._tls.rerank = 0.0
        t0 = time.perf_counter()
        results = self.index.search_batch(queries, k=k, mode=mode, filter=flt, deadline_at=deadline,
                                          **({"rerank": self.reranker} if rerank else {}))
        total, embed, reranked = time.perf_counter() - t0, self._tls.embed, self._tls.rerank
        timings = {"search": total - embed - reranked}
        if embed:
            timings["embed"] = embed
        if rerank:
            timings["rerank"] = reranked
        return [SearchResult(list(hits), dict(timings, batch=len(queries))) for hits in results]

    async def asearch(self, query, k, mode, filter, deadline=None, rerank=False):
        key = (k, mode, json.dumps(filter, sort_keys=True, default=str) if filter else None, bool(rerank))
        tenant = json.dumps((filter or {}).get("tenant"), sort_keys=True, default=str)
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(key, tenant, query, fut, deadline))
        self._start()
        return await fut

    def _take(self) -> list[_Pending]:
        """The next batch: the oldest query of a tenant with no search running, with the queued queries
        that share its key. A tenant that is searching already gets another thread only while two are
        free: the last free thread is kept for a tenant that is not."""
        self._queue = [p for p in self._queue if not p.future.done()]  # callers that gave up
        first = next((p for p in self._queue if not self._running.get(p.tenant)), None)
        if first is None:
            if not self._queue or self.threads - self._active < 2:
                return []
            first = self._queue[0]
        batch = [p for p in self._queue if p.key == first.key][: self.max_batch]
        taken = {id(p) for p in batch}
        self._queue = [p for p in self._queue if id(p) not in taken]
        return batch

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._active < self.threads:
            batch = self._take()
            if not batch:
                return
            self._active += 1
            self._running[batch[0].tenant] = self._running.get(batch[0].tenant, 0) + 1
            loop.create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        tenant = batch[0].tenant
        try:
            k, mode, fkey, rerank = batch[0].key
            deadlines = [p.deadline for p in batch]
            deadline = None if None in deadlines else max(deadlines)  # the last caller still waiting
            flt = json.loads(fkey) if fkey else None
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._search_batch, [p.query for p in batch], k, mode, flt, deadline, rerank)
            except Exception as e:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                return
            for p, res in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(res)
        finally:
            self._active -= 1
            self._running[tenant] -= 1
            if not self._running[tenant]:
                del self._running[tenant]
            self._start()

    async def aadd(self, docs):
        return await asyncio.to_thread(self.index.add_documents, list(docs))

    async def adelete(self, doc_ids):
        return await asyncio.to_thread(self.index.delete_documents, list(doc_ids))

    async def adoc_tenants(self, doc_id):
        def read():
            self._follow_writes()
            return self.index.chunks_for_doc(doc_id)

        return _tenants(await asyncio.to_thread(read))

    async def ahealth(self):
        embedder = getattr(self.index, "_embedder", None)  # None until the first query loads it
        return {"status": "ok", "backend": "local", **self.index.health(),
                "embed_backend": getattr(embedder, "backend", None),
                "searches_running": self._active, "searches_queued": len(self._queue)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.index, "close", None)
        if close:
            close()


class RayRetrieverAdapter:
    """retrieval.ray_retriever.RayRetriever: the index sharded over Ray actors.

    Health is answered from the last count a background probe got: a shard busy with a long search is
    reported `busy`, and only an actor that is gone makes the index `down`."""

    HEALTH_PROBE_S = 10.0  # longest a health probe waits for a shard before calling it busy

    def __init__(self, retriever: Any):
        self.r = retriever
        self._health: dict[str, Any] = {"status": "ok", "backend": "ray", "chunks": None}
        self._probe: Optional[asyncio.Task] = None
        index_dir = getattr(retriever, "index_dir", None)
        self._manifest = Path(index_dir) / "manifest.json" if index_dir else None
        self._seen = self._manifest_state()
        self._reload_lock: Optional[asyncio.Lock] = None

    def _manifest_state(self) -> Optional[tuple]:
        try:
            st = self._manifest.stat() if self._manifest is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None

    async def _follow_writes(self) -> None:
        """Another process committed a generation (`raft index add` beside a running gateway): the shard
        actors reload before this search, so it sees the new documents. One stat when nothing changed."""
        state = self._manifest_state()
        shards = getattr(self.r, "shards", None)
        if state is None or state == self._seen or not shards:
            return
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            state = self._manifest_state()
            if state == self._seen:
                return  # another search reloaded them while this one waited
            await asyncio.gather(*[s.reload.remote() for s in shards])
            self._seen = state

    @classmethod
    def open(cls, index_dir: str, num_shards: int = 2, num_embedders: int = 1,
             embedder: Optional[str] = None, embed_backend: Optional[str] = None, rerank: Any = None,
             num_rerankers: int = 1, reranker_cpus: float = 1.0,
             reranker_gpus: float = 0.0) -> "RayRetrieverAdapter":
        """`embed_backend` None lets RayRetriever fall back to $RAFT_EMBED_BACKEND, then auto; `raft serve`
        always passes its config's value. `rerank`: a RerankConfig; with a model, `num_rerankers`
        cross-encoder actors (each with `reranker_cpus` CPUs and `reranker_gpus` GPUs) serve the rerank stage."""
        from retrieval.ray_retriever import RayRetriever

        r = RayRetriever(index_dir, num_shards=num_shards, num_embedders=num_embedders, embedder=embedder,
                         embed_backend=embed_backend, rerank=rerank, num_rerankers=num_rerankers,
                         reranker_cpus=reranker_cpus, reranker_gpus=reranker_gpus)
        log.info("query embeddings (Ray actors): %s", ", ".join(r.embed_backends()))
        return cls(r)

    async def asearch(self, query, k, mode, filter, deadline=None, rerank=False):
        await self._follow_writes()
        t0 = time.perf_counter()
        budget = None if deadline is None else deadline - time.monotonic()
        if rerank:  # the reranker actors' time is a stage of its own
            hits, timings = await self.r.asearch_timed(query, k, mode, filter, timeout=budget, rerank=True)
            return SearchResult(list(hits), timings)
        # a RayRetriever with rerankers reranks unless told not to (a retriever without them takes no flag)
        off = {"rerank": False} if getattr(self.r, "rerankers", None) else {}
        hits = await self.r.asearch(query, k, mode, filter, timeout=budget, **off)
        return SearchResult(list(hits), {"search": time.perf_counter() - t0})

    async def _call(self, name: str, *args):
        fn = getattr(self.r, "a" + name, None)
        if fn is not None:
            return await fn(*args)
        return await asyncio.to_thread(getattr(self.r, name), *args)

    async def aadd(self, docs):
        try:
            return await self._call("add_documents", list(docs))
        finally:
            self._seen = self._manifest_state()  # the write reloaded the shards itself

    async def adelete(self, doc_ids):
        try:
            return await self._call("delete_documents", list(doc_ids))
        finally:
            self._seen = self._manifest_state()

    async def adoc_tenants(self, doc_id):
        await self._follow_writes()
        return _tenants(await self._call("chunks_for_doc", doc_id))

    async def ahealth(self):
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._refresh())
        return dict(self._health)

    async def _refresh(self) -> None:
        try:
            n = await asyncio.wait_for(asyncio.to_thread(len, self.r), self.HEALTH_PROBE_S)
            self._health = {"status": "ok", "backend": "ray", "chunks": n}
        except (asyncio.TimeoutError, TimeoutError):
            self._health = dict(self._health, status="ok", busy=True)
        except Exception as e:  # a dead shard actor: the service is down until it is restarted
            self._health = {"status": "down", "backend": "ray", "error": f"{type(e).__name__}: {e}"}

    def close(self) -> None:
        shutdown = getattr(self.r, "shutdown", None) or getattr(self.r, "close", None)
        if shutdown:
            shutdown()


def open_retriever(settings: Any) -> Optional[Retriever]:
    """The retriever a RetrievalSettings asks for (None for backend `none`)."""
    if settings.backend == "none":
        return None
    if settings.backend == "ray":
        return RayRetrieverAdapter.open(settings.index_dir, settings.num_shards, settings.num_embedders,
                                        settings.embedder, settings.embed_backend, settings.rerank,
                                        settings.num_rerankers, settings.reranker_cpus, settings.reranker_gpus)
    if settings.embed_threads:
        import torch

        torch.set_num_threads(settings.embed_threads)
    from retrieval.rerank import Reranker

    reranker = Reranker.from_config(settings.rerank)
    if reranker is not None:
        reranker.load()  # now: a bad model fails the start, not the first request that asks for it
        log.info("rerank stage: %s, %d candidates", reranker.model_name, reranker.candidates)
    r = IndexRetriever.open(settings.index_dir, settings.embedder, threads=settings.search_threads,
                            reranker=reranker)
    r.max_batch = settings.max_batch
    backend = r.index.embedder.use_backend(settings.embed_backend, settings.embed_threads)
    log.info("query embeddings: %s on %s", r.index.embedder.name, backend)
    return r
