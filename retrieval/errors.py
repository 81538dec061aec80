"""Retrieval's user-facing error (retrieval imports nothing from `raft`, so it has its own base)."""


class RetrievalError(Exception):
    """Bad corpus, index or query input that the user can fix; the message says what and how."""
