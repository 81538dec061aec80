"""Corpus loading, chunking, embedding, FAISS + BM25 indexes, hybrid search and the Ray actors serving them.

The stable Python API is what `__all__` names:

    from retrieval import Document, IndexConfig, Reranker, RetrievalIndex

    index = RetrievalIndex.build("docs/", "idx", IndexConfig(chunk_size=256))
    hits = index.search("what is RAFT?", k=5)                # hybrid: dense + BM25
    index.add_documents([Document("new.md", "Text that is searchable at once.")])
    hits = index.search("what is RAFT?", k=5, rerank=Reranker("reranker/"))  # + cross-encoder (docs/rerank.md)

Names are imported on first use, so `import retrieval` does not load FAISS or torch. This package imports
neither `raft` nor `serving` (the dependency direction is serving -> raft -> retrieval).
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "RetrievalIndex": "retrieval.index",
    "IndexConfig": "retrieval.config",
    "Document": "retrieval.types",
    "Chunk": "retrieval.types",
    "Hit": "retrieval.types",
    "RetrievalError": "retrieval.errors",
    "load_corpus": "retrieval.loaders",
    "RayRetriever": "retrieval.ray_retriever",
    "Reranker": "retrieval.rerank",
    "RerankConfig": "retrieval.rerank",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports('retrieval', _EXPORTS, globals())
