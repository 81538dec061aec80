"""A dependency-free in-memory retriever: word-overlap scoring, and the index's own filter rules
(`retrieval.filters`: normalize_filter, then matches, the Python twin of the SQL the index runs), so a
filter selects the same chunks here as on a RetrievalIndex. Tests use it to exercise the gateway without
FAISS or an embedder; tests/retrieval/test_filters.py holds both to one table of filters."""

from __future__ import annotations

import re
import time
from typing import Iterable, Optional, Sequence

from retrieval.filters import matches, normalize_filter, stored_metadata
from retrieval.types import Chunk, Document, Hit, chunk_id_for
from serving.retriever import SearchResult

_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class InMemoryRetriever:
    """One chunk per document; score = shared words / query words."""

    def __init__(self, docs: Iterable[Document] = ()):
        self.chunks: dict[str, Chunk] = {}
        self._words: dict[str, set[str]] = {}
        self.add(list(docs))
        self.healthy = True

    def add(self, docs: Sequence[Document]) -> list[str]:
        ids = []
        for d in docs:
            self.delete([d.doc_id])
            cid = chunk_id_for(d.doc_id, 0, len(d.text))
            # metadata as the index stores and returns it (JSON), which is what the filter rules read
            self.chunks[cid] = Chunk(cid, d.doc_id, d.text, d.title, d.source, stored_metadata(d.metadata))
            self._words[cid] = _words(f"{d.title} {d.text}")
            ids.append(cid)
        return ids

    def delete(self, doc_ids: Sequence[str]) -> int:
        gone = [cid for cid, c in self.chunks.items() if c.doc_id in set(doc_ids)]
        for cid in gone:
            del self.chunks[cid], self._words[cid]
        return len(gone)

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filter: Optional[dict] = None) -> list[Hit]:
        flt = normalize_filter(filter)
        q = _words(query) or {""}
        scored = [Hit(c, len(q & self._words[cid]) / len(q)) for cid, c in self.chunks.items()
                  if matches(c, flt)]
        scored.sort(key=lambda h: (-h.score, h.chunk.chunk_id))
        return scored[:k]

    async def asearch(self, query, k, mode, filter, deadline=None):
        if not self.healthy:
            raise ConnectionError("in-memory retriever marked down")
        t0 = time.perf_counter()
        hits = self.search(query, k, mode, filter)
        return SearchResult(hits, {"search": time.perf_counter() - t0})

    async def aadd(self, docs):
        return self.add(docs)

    async def adelete(self, doc_ids):
        return self.delete(doc_ids)

    async def adoc_tenants(self, doc_id):
        tenants = {(c.metadata or {}).get("tenant") for c in self.chunks.values() if c.doc_id == doc_id}
        return tenants or None

    async def ahealth(self):
        return {"status": "ok" if self.healthy else "down", "backend": "memory", "chunks": len(self.chunks)}

    def close(self) -> None:
        pass
