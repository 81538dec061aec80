"""Chunking by tokens of the embedder's tokenizer, preferring paragraph, then sentence, then word
boundaries, with overlap. A chunk's id hashes its document id and character span, so re-chunking the
same text with the same settings gives the same ids (retrieval.types.chunk_id_for).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from retrieval.types import Chunk, Document, chunk_id_for

# boundary strength of a gap between two tokens
_NONE, _WORD, _SENTENCE, _PARAGRAPH = 0, 1, 2, 3
_SENT_END = re.compile(r"[.!?。！？][\"')\]]*$")


def _strengths(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """strength[i] = how good a place it is to cut before token i (i in 1..n-1)."""
    out = [_NONE] * (len(offsets) + 1)
    for i in range(1, len(offsets)):
        prev_end, start = offsets[i - 1][1], offsets[i][0]
        gap = text[prev_end:start]
        if not gap:
            continue
        if "\n\n" in gap or gap.count("\n") >= 2 or re.search(r"\n\s*\n", gap):
            out[i] = _PARAGRAPH
        elif _SENT_END.search(text[max(0, prev_end - 3):prev_end]) or "\n" in gap:
            out[i] = _SENTENCE
        elif gap.isspace():
            out[i] = _WORD
    return out


def _pick_end(strength: list[int], start: int, n: int, size: int) -> int:
    """Last strongest boundary in the second half of the window [start, start+size]."""
    limit = start + size
    if limit >= n:
        return n
    lo = start + max(1, size // 2)
    for level in (_PARAGRAPH, _SENTENCE, _WORD):
        for i in range(limit, lo - 1, -1):
            if strength[i] >= level:
                return i
    return limit


def _pick_next_start(strength: list[int], start: int, end: int, overlap: int) -> int:
    """Where the next chunk begins: `overlap` tokens back from `end`, moved forward to a sentence or
    word boundary so the overlap does not start mid-word."""
    if overlap <= 0:
        return end
    lo = max(start + 1, end - overlap)
    for level in (_SENTENCE, _WORD):
        for i in range(lo, end):
            if strength[i] >= level:
                return i
    return lo


def chunk_document(doc: Document, tokenizer: Any, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Split one document into chunks of at most `chunk_size` tokens (without special tokens)."""
    text = doc.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                    verbose=False)
    offsets = [tuple(o) for o in enc["offset_mapping"] if o[1] > o[0]]
    if not offsets:
        return []
    n = len(offsets)
    strength = _strengths(text, offsets)
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = _pick_end(strength, start, n, chunk_size)
        c0, c1 = offsets[start][0], offsets[end - 1][1]
        body = text[c0:c1].strip()
        if body:
            meta = dict(doc.metadata)
            meta.setdefault("span", [c0, c1])
            chunks.append(Chunk(chunk_id=chunk_id_for(doc.doc_id, c0, c1), doc_id=doc.doc_id, text=body,
                                title=doc.title, source=doc.source, metadata=meta))
        if end >= n:
            break
        start = _pick_next_start(strength, start, end, chunk_overlap)
    return chunks


def chunk_documents(docs: Iterable[Document], tokenizer: Any, chunk_size: int,
                    chunk_overlap: int) -> list[Chunk]:
    out: list[Chunk] = []
    for d in docs:
        out.extend(chunk_document(d, tokenizer, chunk_size, chunk_overlap))
    return out
