"""One table of filters, run against the real RetrievalIndex (the SQL that `retrieval.filters.filter_sql`
compiles, on both the dense and the BM25 path) and against the in-memory test retriever (the Python
`retrieval.filters.matches`): each must select exactly the documents the table names. If the two rule
sets ever diverge, a row fails on one side."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.filters import matches, normalize_filter, stored_metadata
from retrieval.index import RetrievalIndex
from retrieval.types import Chunk, Document, chunk_id_for
from serving.testing.memory_retriever import InMemoryRetriever

# every text holds "lantern", so a BM25 search for it reaches every document and the filter decides
DOCS = [
    Document("d0", "lantern glass from the north", "Glass", "wiki/glass.md",
             {"tenant": "acme", "acl": ["staff", "admin"], "level": 1, "tags": {"region": "north"}}),
    Document("d1", "lantern salt pans", "Salt", "wiki/salt.md",
             {"tenant": "globex", "acl": ["staff"], "level": 2.0, "flag": True}),
    Document("d2", "lantern festival", "7", "",
             {"tenant": "acme", "acl": "admin", "größe": "L", 'say "hi"': "yes", "租户": "甲"}),
    Document("d3", "lantern towers", "Towers", "", {"acl": [], "level": "1", "flag": False}),
    Document("d4", "lantern heron", "Heron", "", {"tenant": "Acme", "x": [["a"], "z"], "n": None}),
    Document("d5", "lantern mine", "Mine", "", {}),
]
ALL = {d.doc_id for d in DOCS}

FILTERS = [  # (filter, the documents it selects)
    (None, ALL),
    ({}, ALL),
    ({"tenant": "acme"}, {"d0", "d2"}),
    ({"tenant": ["acme", "globex"]}, {"d0", "d1", "d2"}),
    ({"tenant": "Acme"}, {"d4"}),  # exact: case counts
    ({"tenant": "nobody"}, set()),
    ({"acl": "admin"}, {"d0", "d2"}),  # a list matches when any element does; a scalar as itself
    ({"acl": ["staff"]}, {"d0", "d1"}),
    ({"acl": ["staff", "admin"], "tenant": "globex"}, {"d1"}),  # every key must match
    ({"title": "Glass"}, {"d0"}),  # columns
    ({"title": 7}, {"d2"}),  # a column compares as text
    ({"doc_id": ["d1", "d3", "nope"]}, {"d1", "d3"}),
    ({"source": "wiki/salt.md"}, {"d1"}),
    ({"source": ""}, {"d2", "d3", "d4", "d5"}),
    ({"level": 1}, {"d0"}),  # numbers by value; never the string "1"
    ({"level": "1"}, {"d3"}),
    ({"level": 2}, {"d1"}),  # 2 == 2.0
    ({"flag": True}, {"d1"}),
    ({"flag": 0}, {"d3"}),  # a bool is 1 or 0
    ({"flag": "true"}, set()),
    ({"größe": "L"}, {"d2"}),  # non-ASCII keys
    ({"租户": "甲"}, {"d2"}),
    ({'say "hi"': "yes"}, {"d2"}),  # a key holding a double quote
    ({"x": "z"}, {"d4"}),
    ({"x": "a"}, set()),  # a nested list is not flattened
    ({"tags": "north"}, {"d0"}),  # an object's values, as SQLite's json_each walks them
    ({"region": "north"}, set()),
    ({"n": "None"}, set()),  # null never matches
    ({"missing": "x"}, set()),
]
IDS = [repr(f) for f, _ in FILTERS]


@pytest.fixture(scope="module")
def real_index(tmp_path_factory):
    """One chunk per document (the in-memory retriever's shape, same chunk ids), random 8-d vectors: no
    embedder is loaded, the filters run on the index's real SQL."""
    chunks = [Chunk(chunk_id_for(d.doc_id, 0, len(d.text)), d.doc_id, d.text, d.title, d.source, d.metadata)
              for d in DOCS]
    vecs = np.random.default_rng(0).standard_normal((len(DOCS), 8)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = tmp_path_factory.mktemp("filters") / "index"
    RetrievalIndex.from_vectors(out, chunks, vecs, embedder_name="random-8d").close()
    idx = RetrievalIndex.open(out)
    yield idx, vecs[:1]
    idx.close()


def _docs(hits) -> set[str]:
    return {h.chunk.doc_id for h in hits}


@pytest.mark.parametrize(("flt", "want"), FILTERS, ids=IDS)
def test_one_filter_table_on_the_real_index_and_the_in_memory_retriever(real_index, flt, want):
    idx, q = real_index
    n = len(DOCS)
    dense = idx.search_vectors(q, k=n, filter=flt)[0]
    bm25 = idx.search("lantern", k=n, mode="bm25", filter=flt)
    fake = InMemoryRetriever(DOCS).search("lantern", k=n, filter=flt)
    assert _docs(dense) == want, "real index, dense"
    assert _docs(bm25) == want, "real index, bm25"
    assert _docs(fake) == want, "in-memory retriever"
    # the hits are the same chunks, with the same metadata, on both sides
    real = {h.chunk.chunk_id: h.chunk.metadata for h in bm25}
    assert {h.chunk.chunk_id: h.chunk.metadata for h in fake} == real
    # and the predicate itself agrees, chunk by chunk
    assert {c.doc_id for c in idx.get(idx.chunk_ids()) if matches(c, normalize_filter(flt))} == want


def test_filter_table_covers_what_it_claims():
    """Every document is selected by some row and left out by another, and both kinds of key appear."""
    for d in DOCS:
        assert any(d.doc_id in want for f, want in FILTERS if f)
        assert any(d.doc_id not in want for f, want in FILTERS if f)
    keys = {k for f, _ in FILTERS for k in (f or {})}
    assert {"doc_id", "title", "source"} <= keys and {"tenant", "acl"} <= keys
    assert stored_metadata({"t": (1, 2)}) == {"t": [1, 2]}  # what the store reads back: JSON


def test_bad_filters_are_refused_the_same_way(real_index):
    from retrieval.errors import RetrievalError

    idx, q = real_index
    fake = InMemoryRetriever(DOCS)
    for bad in ({"tenant": []}, {"tenant": {"a": 1}}, {"": "x"}, "tenant=acme", {"level": float("nan")}):
        with pytest.raises(RetrievalError) as real_err:
            idx.search_vectors(q, k=2, filter=bad)
        with pytest.raises(RetrievalError) as fake_err:
            fake.search("lantern", k=2, filter=bad)
        assert str(real_err.value) == str(fake_err.value)
