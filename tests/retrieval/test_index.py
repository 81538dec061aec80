import json

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.index import RetrievalIndex
from retrieval.types import Document

QUESTION = "Which island is the largest in the Veloria chain?"


def test_build_writes_self_describing_dir_and_each_mode_finds_the_answer(built_index, corpus_dir):
    man = json.loads((built_index / "manifest.json").read_text())
    n_docs = len(list(corpus_dir.glob("*.md")))
    assert man["embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384}
    assert man["faiss"]["type"] == "flat" and man["counts"]["documents"] == n_docs
    assert all(len(f["sha256"]) == 64 for f in man["files"].values())
    idx = RetrievalIndex.open(built_index)
    assert len(idx) == man["counts"]["chunks"] > n_docs
    assert idx.dim == 384 and idx.embedder_name == "all-MiniLM-L6-v2"
    for mode in ("dense", "bm25", "hybrid"):
        hits = idx.search(QUESTION, k=3, mode=mode)
        assert len(hits) == 3, mode
        assert hits[0].chunk.doc_id == "veloria_geography.md", (mode, [h.chunk.doc_id for h in hits])
        assert hits[0].score >= hits[1].score >= hits[2].score
    batch = idx.search_batch([QUESTION, "glass exports"], k=2, mode="hybrid")
    assert [h.chunk.chunk_id for h in batch[0]] == [h.chunk.chunk_id for h in idx.search(QUESTION, 2)]


def test_embed_search_vectors_get_and_doc_chunks(built_index):
    idx = RetrievalIndex.open(built_index)
    v = idx.embed([QUESTION, "salt"])
    assert v.dtype == np.float32 and v.shape == (2, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    hits = idx.search_vectors(v, k=4)
    assert [h.chunk.chunk_id for h in hits[0]] == [h.chunk.chunk_id for h in idx.search(QUESTION, 4, mode="dense")]
    ids = idx.chunk_ids()
    assert len(ids) == len(idx) and len(set(ids)) == len(ids)
    got = idx.get([ids[3], ids[0], "nope"])
    assert [c.chunk_id for c in got] == [ids[3], ids[0]]
    doc_chunks = idx.chunks_for_doc("veloria_history.md")
    assert doc_chunks and all(c.doc_id == "veloria_history.md" for c in doc_chunks)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_inside_search_and_return_k(built_index, mode):
    idx = RetrievalIndex.open(built_index)
    n_globex = sum(1 for c in idx.get(idx.chunk_ids()) if c.metadata["tenant"] == "globex")
    k = 6
    assert n_globex >= k
    hits = idx.search(QUESTION, k=k, mode=mode, filter={"tenant": "globex"})
    # geography (the best answer) is tenant acme: it must not leak, and k globex hits still come back
    assert len(hits) == k if mode != "bm25" else 0 < len(hits) <= k
    assert all(h.chunk.metadata["tenant"] == "globex" for h in hits)
    admin = idx.search(QUESTION, k=50, mode=mode, filter={"acl": "admin"})
    assert admin and {h.chunk.doc_id for h in admin} <= {"veloria_culture.md", "veloria_economy.md"}
    anyof = idx.search(QUESTION, k=3, mode=mode, filter={"doc_id": ["veloria_history.md", "veloria_science.md"]})
    assert anyof and {h.chunk.doc_id for h in anyof} <= {"veloria_history.md", "veloria_science.md"}
    assert idx.search(QUESTION, k=3, mode=mode, filter={"tenant": "nobody"}) == []


def test_bad_queries_are_clear_errors(built_index):
    idx = RetrievalIndex.open(built_index)
    for k in (0, -1, 1.5):
        with pytest.raises(RetrievalError, match="k must be a positive integer"):
            idx.search("x", k=k)
    with pytest.raises(RetrievalError, match="unknown search mode"):
        idx.search("x", mode="fuzzy")
    with pytest.raises(RetrievalError, match="filter"):
        idx.search("x", filter={"tenant": {"nested": 1}})
    with pytest.raises(RetrievalError, match="filter"):
        idx.search("x", filter="tenant=acme")


def test_add_delete_survive_restart(index_copy):
    idx = RetrievalIndex.open(index_copy)
    n0 = len(idx)
    new = [Document("news/zorblat.md", "The Zorblat festival of lanterns is held every spring on Marenta.",
                    title="Zorblat", metadata={"tenant": "acme"})]
    ids = idx.add_documents(new)
    assert ids and len(idx) == n0 + len(ids)
    assert idx.search("Zorblat lantern festival", k=1, mode="dense")[0].chunk.doc_id == "news/zorblat.md"
    assert idx.search("Zorblat", k=1, mode="bm25")[0].chunk.chunk_id == ids[0]
    # restart: a fresh process view sees the addition
    idx2 = RetrievalIndex.open(index_copy)
    assert len(idx2) == n0 + len(ids) and idx2.get(ids)[0].title == "Zorblat"
    removed = idx2.delete_documents(["news/zorblat.md", "veloria_geography.md"])
    assert removed > len(ids)
    for mode in ("dense", "bm25", "hybrid"):
        got = {h.chunk.doc_id for h in idx2.search("Zorblat festival largest island Marenta", k=50, mode=mode)}
        assert not got & {"news/zorblat.md", "veloria_geography.md"}, mode
    idx3 = RetrievalIndex.open(index_copy)
    assert len(idx3) == n0 + len(ids) - removed
    assert idx3.chunks_for_doc("veloria_geography.md") == []
    got = {h.chunk.doc_id for h in idx3.search("largest island Marenta", k=50, mode="dense")}
    assert "veloria_geography.md" not in got
    assert idx3.delete_documents(["not-there"]) == 0
    # re-adding a doc id replaces its chunks instead of duplicating them
    idx3.add_documents([Document("d", "first version text")])
    idx3.add_documents([Document("d", "second version text")])
    assert [c.text for c in idx3.chunks_for_doc("d")] == ["second version text"]
    # each write added a segment (the replaced version's, all tombstones, is merged away in the background);
    # only files the manifest names remain, and a full merge leaves one segment
    idx3.wait_for_merges()
    assert idx3.merge_error is None
    man = json.loads((index_copy / "manifest.json").read_text())
    data = {p.name for p in index_copy.iterdir() if p.name.startswith(("store.", "dense.", "sparse.", "tomb."))}
    assert data == set(man["files"]) and len(man["segments"]) > 1
    # dense scores do not depend on the segments; BM25's statistics lose the deleted chunks in a merge
    before = [(h.chunk.chunk_id, round(h.score, 4)) for h in idx3.search("second version island", 8, "dense")]
    assert idx3.merge(full=True) == len(man["segments"])
    assert len([p for p in index_copy.iterdir() if p.name.startswith("store.")]) == 1
    assert [(h.chunk.chunk_id, round(h.score, 4)) for h in idx3.search("second version island", 8, "dense")] == before
    assert idx3.search("second version", k=1, mode="bm25")[0].chunk.doc_id == "d"
    assert RetrievalIndex.open(index_copy).manifest["counts"]["tombstones"] == 0


def test_embedder_mismatch_and_broken_dirs_are_clear_errors(index_copy, tmp_path):
    with pytest.raises(RetrievalError, match="built with embedder 'all-MiniLM-L6-v2'"):
        RetrievalIndex.open(index_copy, embedder="BAAI/bge-small-en-v1.5")
    RetrievalIndex.open(index_copy, embedder="sentence-transformers/all-MiniLM-L6-v2")  # an alias: fine
    with pytest.raises(RetrievalError, match="does not exist"):
        RetrievalIndex.open(tmp_path / "missing")
    half = tmp_path / "half"
    half.mkdir()
    (half / "store.g1.sqlite").write_bytes(b"")
    with pytest.raises(RetrievalError, match="half-written"):
        RetrievalIndex.open(half)
    man = json.loads((index_copy / "manifest.json").read_text())
    (index_copy / man["segments"][0]["dense"][0]).unlink()
    with pytest.raises(RetrievalError, match="half-written or damaged"):
        RetrievalIndex.open(index_copy)


def test_dimension_mismatch_is_detected(index_copy):
    man = json.loads((index_copy / "manifest.json").read_text())
    man["embedder"]["dim"] = 768  # as if built by a 768-d model under the same name
    (index_copy / "manifest.json").write_text(json.dumps(man))
    idx = RetrievalIndex.open(index_copy)
    with pytest.raises(RetrievalError, match="dimension"):
        idx.search("x", mode="dense")


def test_empty_corpus_is_an_error(tmp_path, small_config):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "empty.md").write_text("")
    with pytest.raises(RetrievalError, match="no usable documents"):
        RetrievalIndex.build(tmp_path / "c", tmp_path / "out", small_config)


def test_embedding_cache_skips_unchanged_chunks(tmp_path, tenant_docs, small_config):
    out = tmp_path / "i"
    first = RetrievalIndex.build(tenant_docs[:4], out, small_config)
    assert first.build_summary["embedded"] == first.build_summary["chunks"]
    again = RetrievalIndex.build(tenant_docs[:5], out, small_config)
    s = again.build_summary
    assert s["cached"] == first.build_summary["chunks"] and s["embedded"] == s["chunks"] - s["cached"] > 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq"])
def test_other_faiss_types_build_search_filter_and_delete(tmp_path, tenant_docs, small_config, kind):
    cfg = small_config.model_copy(update={"index_type": kind, "pq_m": 8, "shards": 2})
    idx = RetrievalIndex.build(tenant_docs, tmp_path / kind, cfg)
    assert idx.manifest["faiss"]["type"] == kind and len(idx.manifest["segments"][0]["dense"]) == 2
    # approximate search: the best answer is near the top (8-byte PQ codes of 384-d vectors blur close texts)
    assert "veloria_geography.md" in [h.chunk.doc_id for h in idx.search(QUESTION, k=5, mode="dense")]
    hits = idx.search(QUESTION, k=5, mode="dense", filter={"tenant": "globex"})
    assert len(hits) == 5 and all(h.chunk.metadata["tenant"] == "globex" for h in hits)
    idx.delete_documents(["veloria_geography.md"])
    re = RetrievalIndex.open(tmp_path / kind)
    assert "veloria_geography.md" not in {h.chunk.doc_id for h in re.search(QUESTION, k=30, mode="dense")}


def test_local_embedder_path_is_stored_absolute(tmp_path, monkeypatch):
    from retrieval.embedders import canonical_name

    (tmp_path / "models" / "emb").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert canonical_name("models/emb") == str((tmp_path / "models" / "emb").resolve())
    assert canonical_name("sentence-transformers/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert canonical_name("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # hub ids stay as named


def test_memoised_filter_vectors_follow_live_writes(index_copy, monkeypatch):
    """Filtered dense search memoises the filter's vectors; adds and deletes must not be served stale."""
    import retrieval.search as rs

    idx = RetrievalIndex.open(index_copy)
    flt = {"tenant": "globex"}

    def ranked(hits):
        return [(h.chunk.chunk_id, round(h.score, 5)) for h in hits]

    first = idx.search(QUESTION, k=4, mode="dense", filter=flt)
    assert any(key[0] == "exact" for key in idx.segments[0].memo)  # the exact path ran and kept its matrix
    assert ranked(idx.search(QUESTION, k=4, mode="dense", filter=flt)) == ranked(first)
    monkeypatch.setattr(rs, "EXACT_FILTER_LIMIT", 0)  # FAISS with an ID selector instead (flat here: exact)
    assert idx.dense.kind == "flat"
    assert ranked(idx.search(QUESTION, k=4, mode="dense", filter=flt)) == ranked(first)
    monkeypatch.undo()

    doc = Document("lynx", "The largest island in the Veloria chain is where the snow lynx sleeps.", "Lynx",
                   "lynx.md", {"tenant": "globex"})
    idx.add_documents([doc])
    after_add = idx.search(QUESTION, k=4, mode="dense", filter=flt)
    assert "lynx" in {h.chunk.doc_id for h in after_add}
    assert all(h.chunk.metadata.get("tenant") == "globex" for h in after_add)
    idx.delete_documents(["lynx"])
    assert ranked(idx.search(QUESTION, k=4, mode="dense", filter=flt)) == ranked(first)
    idx.close()


def test_from_vectors_writes_an_index_that_opens_searches_and_caches_its_vectors(built_index, tmp_path,
                                                                                 tenant_docs, small_config):
    """The public path for vectors computed elsewhere (benchmarks, precomputed embeddings): the result is
    an ordinary index: it reopens, searches by vector, filters, and its cache holds the given vectors."""
    src = RetrievalIndex.open(built_index)
    chunks = src.get(src.chunk_ids())
    vecs = src.embed([c.text for c in chunks])
    src.close()
    out = tmp_path / "fv"
    idx = RetrievalIndex.from_vectors(out, chunks, vecs, small_config)
    idx.close()
    idx = RetrievalIndex.open(out)
    assert len(idx) == len(chunks) and idx.embedder_name == "all-MiniLM-L6-v2"
    hits = idx.search_vectors(vecs[:1], k=1)[0]
    assert hits[0].chunk.chunk_id == chunks[0].chunk_id
    tenant = chunks[0].metadata["tenant"]
    assert all(h.chunk.metadata["tenant"] == tenant
               for h in idx.search_vectors(vecs[:1], k=5, filter={"tenant": tenant})[0])
    idx.close()
    # the same chunks built into the same directory embed nothing: every vector came from the cache
    rebuilt = RetrievalIndex.build(tenant_docs, out, small_config)
    assert rebuilt.build_summary["embedded"] == 0 and rebuilt.build_summary["cached"] == len(chunks)
    rebuilt.close()
    with pytest.raises(RetrievalError, match="2 chunks but 1 vectors"):
        RetrievalIndex.from_vectors(tmp_path / "bad", chunks[:2], vecs[:1])


def test_chunk_embedding_text_is_what_the_index_embeds():
    """Chunk.embedding_text (public: benchmarks time an encoder on the same texts) is the index's rule."""
    from retrieval.index import _embed_text
    from retrieval.types import Chunk

    for c in (Chunk("c1", "d", "Some text.", title="A title"), Chunk("c2", "d", "Untitled text.")):
        assert c.embedding_text() == _embed_text(c)


def test_pq_m_is_the_largest_divisor_of_the_dimension_up_to_the_setting():
    """FAISS needs pq_m to divide the dimension; the setting is an upper bound (as documented), not refused."""
    from retrieval.config import IndexConfig
    from retrieval.dense import make_params

    for pq_m, dim, want in ((48, 384, 48), (7, 384, 6), (48, 1024, 32), (500, 384, 384)):
        assert make_params("ivf_pq", dim, 100_000, IndexConfig(pq_m=pq_m))["m"] == want, (pq_m, dim)
