"""Retrieval's data contract: a Document to index, its Chunks, and the Hit that search returns."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any


def chunk_id_for(doc_id: str, start: int, end: int) -> str:
    """Stable id: a hash of the source document id and the character span of the chunk in it."""
    return hashlib.sha1(f"{doc_id}\x00{start}:{end}".encode("utf-8")).hexdigest()[:16]


@dataclass
class Document:
    """One loaded source document before chunking."""

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """A passage of a document: the unit that is embedded, indexed, retrieved and shown to the model.

    `metadata` is free-form; filters honour its `tenant` and `acl` keys (and any other key).
    """

    chunk_id: str
    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def embedding_text(self) -> str:
        """What an index embeds for this chunk: its title (context for short passages), a newline, and its
        text; the text alone when there is no title."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Chunk":
        return cls(**{k: d[k] for k in ("chunk_id", "doc_id", "text", "title", "source", "metadata") if k in d})


@dataclass
class Hit:
    """One search result: the chunk and its score (higher is better; the scale depends on the mode)."""

    chunk: Chunk
    score: float

    def to_dict(self) -> dict[str, Any]:
        c = self.chunk
        return {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "score": float(self.score), "title": c.title,
                "text": c.text, "source": c.source, "metadata": c.metadata}
