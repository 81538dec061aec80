"""Citations: the chunks shown to the model, each with the answer's quotes that appear in it."""

from __future__ import annotations

from typing import Any, Sequence

from raft.prompt import extract_quotes, quote_in


def build_citations(hits: Sequence[Any], answer: str) -> list[dict[str, Any]]:
    """One citation per retrieved chunk, in shown order; `quotes` are the answer's
    ##begin_quote## spans found (case/whitespace-insensitively) in that chunk's text."""
    quotes = extract_quotes(answer or "")
    out = []
    for hit in hits:
        c = hit.chunk
        out.append({"chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title or "",
                    "source": c.source or "", "score": round(float(hit.score), 6),
                    "quotes": [q for q in quotes if quote_in(q, c.text)]})
    return out
