"""The BM25 engine (retrieval/sparse.py) against the one it replaced, SQLite FTS5's bm25(chunks_fts, 0.5,
1.0) over the same chunks: the same top k with the same scores, ties aside; frequent terms left out of the
scored query without changing the ranking; fillers; bounded queries; batches equal single queries."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from retrieval.filters import matches, normalize_filter
from retrieval.index import RetrievalIndex
from retrieval.sparse import MAX_QUERY_TERMS, analyzer
from retrieval.types import Document

QUERIES = ["Which islands are the largest in the Veloria chain, and what is the capital of the north?",
           "What does Veloria export?", "Who governs the islands?", "glass exports and amber herons",
           "running runners ran", "volcano", "the of and"]


def _fts5(chunks: dict):
    """The old engine: an FTS5 table of the same chunks (rowid = row), porter unicode61, as the store had."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE f USING fts5(title, text, tokenize='porter unicode61')")
    con.executemany("INSERT INTO f(rowid, title, text) VALUES (?,?,?)",
                    [(r, c.title, c.text) for r, c in chunks.items()])
    return con


def _or(query: str) -> str:
    return " OR ".join(f'"{t}"' for t in dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)))


def _same_within_ties(got, want, k):
    """Scores equal position by position; rows equal except among scores tied at the cut (or the ~0 scores
    of terms FTS5 clamps, which the new engine leaves out and fills with in row order)."""
    assert len(got) == len(want) == k or len(got) == len(want)
    for (_, a), (_, b) in zip(got, want):
        assert abs(a - b) < 1e-3, (got, want)
    cut = want[-1][1] if want else 0.0
    above = lambda lst: {r for r, s in lst if s > cut + 1e-3}  # noqa: E731
    assert above(got) == above(want)


@pytest.fixture(scope="module")
def index_and_chunks(built_index):
    idx = RetrievalIndex.open(built_index)
    with idx.reading() as snap:
        chunks = snap.get_rows(snap.segments[0].rows)
    yield idx, chunks
    idx.close()


@pytest.mark.parametrize("flt", [None, {"tenant": "acme"}, {"acl": "admin"}])
def test_same_top_k_as_fts5_within_ties(index_and_chunks, flt):
    idx, chunks = index_and_chunks
    con = _fts5(chunks)
    f = normalize_filter(flt)
    for q in QUERIES:
        for k in (1, 5, 20):
            got = idx.search(q, k=k, mode="bm25", filter=flt)
            got = [(next(r for r, c in chunks.items() if c.chunk_id == h.chunk.chunk_id), h.score) for h in got]
            data = con.execute("SELECT rowid, bm25(f, 0.5, 1.0) s FROM f WHERE f MATCH ? ORDER BY s",
                               [_or(q)]).fetchall()
            want = [(int(r), -s) for r, s in data if not f or matches(chunks[r], f)][:k]
            _same_within_ties(got, want, k)


def test_frequent_terms_are_left_out_and_chunks_matching_only_them_fill_k(index_and_chunks):
    idx, chunks = index_and_chunks
    n = len(chunks)
    con = _fts5(chunks)
    df = {t: con.execute("SELECT count(*) FROM f WHERE f MATCH ?", [f'"{t}"']).fetchone()[0]
          for t in ("the", "islands")}
    assert 2 * df["the"] > n and 0 < df["islands"]  # the corpus property the test relies on
    rare = df["islands"]
    with idx.reading() as snap:
        got = idx.candidates(snap, None, ["the islands"], rare + 3, "bm25", {})[0]
        assert len(got) == rare + 3 and len({r for r, _ in got}) == rare + 3
        scores = [s for _, s in got]
        assert min(scores[:rare]) > 0 and scores[rare:] == [0.0, 0.0, 0.0]  # fillers score 0 and come last
        fillers = [r for r, _ in got[rare:]]
        assert fillers == sorted(fillers)  # in row order: the same whatever the sharding
        acme = idx.candidates(snap, None, ["the islands"], 50, "bm25", normalize_filter({"tenant": "acme"}))[0]
        assert {chunks[r].metadata["tenant"] for r, _ in acme} == {"acme"}  # the filter holds for the fillers too


def test_a_query_reads_a_bounded_number_of_terms(index_and_chunks):
    idx, _ = index_and_chunks
    words = [f"zq{i}" for i in range(20_000)]
    assert len(analyzer().query_terms(" ".join(words) + " island")) == MAX_QUERY_TERMS
    t0 = time.monotonic()
    idx.search(" ".join(words), k=3, mode="bm25")
    assert time.monotonic() - t0 < 5.0


def test_a_batch_ranks_each_query_as_alone(index_and_chunks):
    idx, _ = index_and_chunks
    batch = idx.search_batch(QUERIES, k=7, mode="bm25", filter={"tenant": "globex"})
    for q, hits in zip(QUERIES, batch):
        alone = idx.search(q, k=7, mode="bm25", filter={"tenant": "globex"})
        assert [(h.chunk.chunk_id, round(h.score, 5)) for h in hits] == \
               [(h.chunk.chunk_id, round(h.score, 5)) for h in alone]


def test_statistics_span_segments(index_copy):
    idx = RetrievalIndex.open(index_copy)
    assert idx.search("zebracorn", k=1, mode="bm25") == []
    idx.add_documents([Document("z", "A zebracorn grazes by the glass bridge.", "Z", "z.md", {})])
    idx.add_documents([Document("z2", "Zebracorn herds and zebracorn foals.", "Z2", "z2.md", {})])
    hits = idx.search("zebracorn", k=5, mode="bm25")
    assert [h.chunk.doc_id for h in hits] == ["z2", "z"]  # two occurrences in a shorter chunk rank first
    # the df of "zebracorn" is summed over the two new segments: both score with idf(df=2)
    with idx.reading() as snap:
        assert sum(s.sparse.df[s.sparse.vocab["zebracorn"]] for s in snap.segments
                   if "zebracorn" in s.sparse.vocab) == 2
    idx.close()
