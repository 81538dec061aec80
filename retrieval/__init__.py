"""Corpus loading, chunking, embedding, FAISS + BM25 indexes, hybrid search and the Ray actors serving them.

This package imports neither `raft` nor `serving` (see DESIGN.md: serving -> raft -> retrieval).
"""
