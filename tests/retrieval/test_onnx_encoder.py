"""Query embeddings on ONNX Runtime: the same vectors as PyTorch, an export cached once, and a clear
fallback (auto) or error (onnx) where a model cannot take that path."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.embedders import Embedder
from retrieval.errors import RetrievalError
from retrieval.onnx_encoder import OnnxEncoder, OnnxUnsupported, _structure

TEXTS = ["Where does the snow lynx sleep?", "a", ("Veloria's glass bridges span the river delta in the north, "
                                                   "and the harbour council meets there every spring to set the tolls.")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_onnx_vectors_match_torch_and_the_export_is_reused(embedder_path, cache):
    emb = Embedder(embedder_path)
    torch_vecs = emb.encode(TEXTS)  # padded batch of very different lengths: masks must match too
    assert emb.use_backend("onnx", threads=1) == "onnx" and emb.backend == "onnx"
    onnx_vecs = emb.encode(TEXTS)
    assert onnx_vecs.dtype == np.float32 and onnx_vecs.shape == torch_vecs.shape
    assert np.abs(onnx_vecs - torch_vecs).max() < 1e-4
    assert np.allclose(np.linalg.norm(onnx_vecs, axis=1), 1.0, atol=1e-5)
    singles = np.vstack([emb.encode([t]) for t in TEXTS])  # one query at a time, as the gateway sends them
    assert np.abs(singles - torch_vecs).max() < 1e-4

    exported = list(cache.glob("*/model.onnx"))
    assert len(exported) == 1
    mtime = exported[0].stat().st_mtime_ns
    OnnxEncoder(emb.model, emb.path, threads=1)  # a second process/encoder reuses the file
    assert exported[0].stat().st_mtime_ns == mtime

    # the export leaves the PyTorch model in eval mode: dropout stays off for whoever calls it directly
    assert not emb.model[0].auto_model.training
    assert emb.use_backend("torch") == "torch"
    assert np.array_equal(emb.encode(TEXTS), torch_vecs)


class Transformer:  # stand-ins named like sentence-transformers modules
    pass


class Pooling:
    def __init__(self, mode="mean"):
        self.mode = mode

    def get_config_dict(self):
        return {"pooling_mode": self.mode}


class Dense:
    pass


@pytest.mark.parametrize("modules, reason", [
    ([Transformer(), Pooling(), Dense()], "Dense"),
    ([Transformer(), Pooling("weightedmean")], "weightedmean"),
    ([Transformer()], "Transformer"),
])
def test_unsupported_pipelines_are_named(modules, reason):
    with pytest.raises(OnnxUnsupported, match=reason):
        _structure(modules)


def test_onnx_refuses_and_auto_falls_back(embedder_path, cache, monkeypatch):
    import retrieval.onnx_encoder as oe

    def no(_):
        raise OnnxUnsupported("modules ['Transformer', 'Dense'] are not Transformer -> Pooling")

    monkeypatch.setattr(oe, "_structure", no)
    emb = Embedder(embedder_path)
    with pytest.raises(RetrievalError, match=r"cannot run on ONNX Runtime: modules .*use backend torch"):
        emb.use_backend("onnx")
    assert emb.use_backend("auto") == "torch"
    assert emb.encode(["still works"]).shape == (1, 384)
    with pytest.raises(RetrievalError, match="'tensorrt' is not one of auto, torch, onnx"):
        emb.use_backend("tensorrt")


def test_gateway_retriever_embeds_queries_on_onnx_by_default(built_index, cache):
    from serving.config import RetrievalSettings
    from serving.retriever import open_retriever

    settings = RetrievalSettings(index_dir=str(built_index))
    assert settings.embed_backend == "auto"
    r = open_retriever(settings)
    try:
        assert r.index.embedder.backend == "onnx"
        hits = r.index.search("Where does the snow lynx sleep?", k=3, mode="dense")
        assert hits
    finally:
        r.index.embedder.use_backend("torch")  # the embedder is shared in this process: leave it as found
        r.close()


def test_gateway_passes_embed_backend_to_ray_embedders(monkeypatch, built_index):
    """The ray backend used to ignore `embed_backend`: its actors read only an environment variable."""
    import retrieval.ray_retriever as rr
    from serving.config import RetrievalSettings
    from serving.retriever import open_retriever

    seen = {}

    class FakeRay:
        def __init__(self, index_dir, **kw):
            seen.update(kw, index_dir=index_dir)

        def embed_backends(self):
            return [str(seen["embed_backend"])]

    monkeypatch.setattr(rr, "RayRetriever", FakeRay)
    r = open_retriever(RetrievalSettings(backend="ray", index_dir=str(built_index), embed_backend="torch",
                                         num_shards=3))
    assert isinstance(r.r, FakeRay)
    assert (seen["embed_backend"], seen["num_shards"], seen["index_dir"]) == ("torch", 3, str(built_index))

    # called as a library without a backend, the adapter leaves the choice to RayRetriever, which then
    # reads $RAFT_EMBED_BACKEND (it used to pass "auto", so the variable was never read)
    from serving.retriever import RayRetrieverAdapter

    seen.clear()
    RayRetrieverAdapter.open(str(built_index))
    assert seen["embed_backend"] is None
