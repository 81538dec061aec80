"""The gateway's view of retrieval: one small async protocol, and adapters for what implements it.

- `IndexRetriever`: a `retrieval.index.RetrievalIndex` in the gateway process (searches run in a worker
  thread, so the event loop keeps serving while FAISS and the embedder work).
- `RayRetrieverAdapter`: `retrieval.ray_retriever.RayRetriever` (shard and embedder actors on Ray).
- `InMemoryRetriever` (serving/memory_retriever.py): a dependency-free fake for tests and demos.

Every search returns the hits and how long the embed and search stages took (seconds; None when the
backend cannot tell them apart), which the gateway exports as Prometheus histograms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from retrieval.types import Document, Hit

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds ("embed", "search")


@runtime_checkable
class Retriever(Protocol):
    async def asearch(self, query: str, k: int, mode: str, filter: Optional[dict]) -> SearchResult: ...

    async def aadd(self, docs: Sequence[Document]) -> list[str]: ...

    async def adelete(self, doc_ids: Sequence[str]) -> int: ...

    async def adoc_tenants(self, doc_id: str) -> Optional[set]:
        """Tenants (metadata `tenant`, None for untagged chunks) of a document's chunks; None if unknown."""
        ...

    async def ahealth(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _tenants(chunks: Sequence[Any]) -> Optional[set]:
    if not chunks:
        return None
    return {(c.metadata or {}).get("tenant") for c in chunks}


class IndexRetriever:
    """A RetrievalIndex opened in this process.

    Concurrent requests are micro-batched: while one `search_batch` runs (in a worker thread, so the
    event loop keeps serving), arriving queries queue up and go together in the next batch. One query
    embedding batch of 16 costs far less than 16 single ones, which is what keeps the retrieval hop
    cheap at high concurrency; a lone request never waits for company.
    """

    def __init__(self, index: Any, max_batch: int = 32):
        self.index = index
        self.max_batch = max_batch
        self._queue: list[tuple[tuple, str, asyncio.Future]] = []
        self._draining = False
        # FAISS forbids adding/removing while searching, and a write swaps (and closes) the SQLite store
        # under a reader: writes and searches take turns. Searches are already one at a time (_drain).
        self._turn = threading.Lock()
        # The index embeds inside search(); timing its `embed` (per thread) splits a search into the
        # embed and search stages the metrics report, without reaching into the index's internals.
        self._tls = threading.local()
        embed = index.embed

        def timed_embed(texts):
            t0 = time.perf_counter()
            try:
                return embed(texts)
            finally:
                self._tls.embed = getattr(self._tls, "embed", 0.0) + time.perf_counter() - t0

        index.embed = timed_embed

    @classmethod
    def open(cls, index_dir: str, embedder: Optional[str] = None) -> "IndexRetriever":
        from retrieval.index import RetrievalIndex

        return cls(RetrievalIndex.open(index_dir, embedder=embedder))

    def _search_batch(self, queries: list[str], k: int, mode: str, flt: Optional[dict]):
        self._tls.embed = 0.0
        t0 = time.perf_counter()
        with self._turn:
            results = self.index.search_batch(queries, k=k, mode=mode, filter=flt)
        total, embed = time.perf_counter() - t0, self._tls.embed
        timings = {"search": total - embed}
        if embed:
            timings["embed"] = embed
        return [SearchResult(list(hits), dict(timings, batch=len(queries))) for hits in results]

    async def asearch(self, query, k, mode, filter):
        key = (k, mode, json.dumps(filter, sort_keys=True, default=str) if filter else None)
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((key, query, fut))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                key = self._queue[0][0]
                batch = [item for item in self._queue if item[0] == key][: self.max_batch]
                taken = {id(item) for item in batch}
                self._queue = [item for item in self._queue if id(item) not in taken]
                k, mode, flt = key[0], key[1], json.loads(key[2]) if key[2] else None
                try:
                    results = await asyncio.to_thread(self._search_batch, [q for _, q, _ in batch], k, mode, flt)
                except Exception as e:
                    for _, _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, _, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._draining = False

    def _locked(self, fn, *args):
        with self._turn:
            return fn(*args)

    async def aadd(self, docs):
        return await asyncio.to_thread(self._locked, self.index.add_documents, list(docs))

    async def adelete(self, doc_ids):
        return await asyncio.to_thread(self._locked, self.index.delete_documents, list(doc_ids))

    async def adoc_tenants(self, doc_id):
        return _tenants(await asyncio.to_thread(self._locked, self.index.chunks_for_doc, doc_id))

    async def ahealth(self):
        return {"status": "ok", "backend": "local", "chunks": len(self.index),
                "embedder": getattr(self.index, "embedder_name", None), "path": str(getattr(self.index, "path", ""))}

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if close:
            close()


class RayRetrieverAdapter:
    """retrieval.ray_retriever.RayRetriever: the index sharded over Ray actors."""

    def __init__(self, retriever: Any):
        self.r = retriever

    @classmethod
    def open(cls, index_dir: str, num_shards: int = 2, num_embedders: int = 1,
             embedder: Optional[str] = None, embed_backend: Optional[str] = None) -> "RayRetrieverAdapter":
        """`embed_backend` None lets RayRetriever fall back to $RAFT_EMBED_BACKEND, then auto; `raft serve`
        always passes its config's value."""
        from retrieval.ray_retriever import RayRetriever

        r = RayRetriever(index_dir, num_shards=num_shards, num_embedders=num_embedders, embedder=embedder,
                         embed_backend=embed_backend)
        log.info("query embeddings (Ray actors): %s", ", ".join(r.embed_backends()))
        return cls(r)

    async def asearch(self, query, k, mode, filter):
        t0 = time.perf_counter()
        hits = await self.r.asearch(query, k, mode, filter)
        return SearchResult(list(hits), {"search": time.perf_counter() - t0})

    async def _call(self, name: str, *args):
        fn = getattr(self.r, "a" + name, None)
        if fn is not None:
            return await fn(*args)
        return await asyncio.to_thread(getattr(self.r, name), *args)

    async def aadd(self, docs):
        return await self._call("add_documents", list(docs))

    async def adelete(self, doc_ids):
        return await self._call("delete_documents", list(doc_ids))

    async def adoc_tenants(self, doc_id):
        return _tenants(await self._call("chunks_for_doc", doc_id))

    async def ahealth(self):
        n = await asyncio.to_thread(len, self.r)
        return {"status": "ok", "backend": "ray", "chunks": n}

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
                                        settings.embedder, settings.embed_backend)
    if settings.embed_threads:
        import torch

        torch.set_num_threads(settings.embed_threads)
    r = IndexRetriever.open(settings.index_dir, settings.embedder)
    r.max_batch = settings.max_batch
    backend = r.index.embedder.use_backend(settings.embed_backend, settings.embed_threads)
    log.info("query embeddings: %s on %s", r.index.embedder.name, backend)
    return r
