"""BM25 leaves stop-word-like terms (in more than half of the chunks) out of the FTS5 MATCH: faster on
large indexes, and the ranking is the one the full query gives (FTS5 clamps their IDF to ~0)."""

from __future__ import annotations

from retrieval.filters import normalize_filter
from retrieval.index import RetrievalIndex

QUERY = "Which islands are the largest in the Veloria chain, and what is the capital of the north?"


def full_match(query: str) -> str:
    import re

    terms = list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)))
    return " OR ".join(f'"{t}"' for t in terms)


def test_frequent_terms_are_left_out_and_the_ranking_is_unchanged(built_index):
    idx = RetrievalIndex.open(built_index)
    store = idx.store
    n = store.count()
    df = store._doc_freqs(["the", "islands", "island", "veloria", "zebracorn"])
    assert 2 * df["the"] > n  # the corpus property the test relies on: "the" is in most chunks
    assert df["islands"] == df["island"] > 0  # counted after FTS5's porter stemming, like the index
    assert df["zebracorn"] == 0

    terms, frequent = store._terms(QUERY)
    assert "the" not in terms and "islands" in terms and "the" in frequent
    all_df = store._doc_freqs(full_match(QUERY).replace('"', "").split(" OR "))
    assert terms == [t for t, d in all_df.items() if 0 < d and 2 * d <= n]
    assert frequent == [t for t in all_df if t not in terms]
    assert store._terms("the of the") == (["the", "of"], [])  # nothing but frequent terms: kept as asked

    sql = ("SELECT f.rowid, bm25(chunks_fts, 0.5, 1.0) AS s FROM chunks_fts f WHERE chunks_fts MATCH ? "
           "ORDER BY s LIMIT ?")
    want = [(int(r), -s) for r, s in store.con.execute(sql, [full_match(QUERY), 8])]
    got = store.bm25(QUERY, 8, normalize_filter(None))
    assert [r for r, _ in got] == [r for r, _ in want] and len(got) == 8
    # the left-out terms carried FTS5's clamped IDF (1e-6 each): the scores differ by about that much
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) < 1e-3
    idx.close()


def test_term_statistics_follow_writes(index_copy):
    from retrieval.types import Document

    idx = RetrievalIndex.open(index_copy)
    before = idx.store._doc_freqs(["zebracorn"])["zebracorn"]
    idx.add_documents([Document("z", "A zebracorn grazes by the glass bridge.", "Z", "z.md", {})])
    assert before == 0 and idx.store._doc_freqs(["zebracorn"])["zebracorn"] == 1
    assert idx.search("zebracorn", k=1, mode="bm25")[0].chunk.doc_id == "z"
    idx.close()


def test_chunks_matching_only_frequent_terms_still_fill_k(built_index):
    """Leaving frequent terms out must not shrink the result: as before, up to k chunks come back."""
    idx = RetrievalIndex.open(built_index)
    store = idx.store
    rare = store._doc_freqs(["islands"])["islands"]
    assert 0 < rare and 2 * store._doc_freqs(["the"])["the"] > store.count()
    got = store.bm25("the islands", rare + 3, normalize_filter(None))
    assert len(got) == rare + 3 and len({r for r, _ in got}) == rare + 3
    scores = [s for _, s in got]
    assert min(scores[:rare]) > 0 and scores[rare:] == [0.0, 0.0, 0.0]  # fillers score 0 and come last
    fillers = [r for r, _ in got[rare:]]
    assert fillers == sorted(fillers)  # in row order: the same whatever the sharding
    with_tenant = store.bm25("the islands", 50, normalize_filter({"tenant": "acme"}))
    tenants = {c.metadata["tenant"] for c in store.get_rows([r for r, _ in with_tenant]).values()}
    assert tenants == {"acme"}  # the filter holds for the fillers too
    idx.close()
