"""The OpenAI-compatible gateway with retrieval and citations, and the engine launchers behind it.

The stable Python API is what `__all__` names (the `raft serve` command is the usual way in):

    from serving import Gateway, ServeConfig, create_app, open_retriever

    cfg = ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://127.0.0.1:8000/v1",
                                                 "model": "my-model"},
                                      "retrieval": {"index_dir": "idx"}})
    app = create_app(Gateway.from_config(cfg, cfg.engine.url, open_retriever(cfg.retrieval)))  # ASGI app

Names are imported on first use, so `import serving` loads neither FastAPI nor FAISS. Fakes for tests
and benchmarks (a fake engine, an in-memory retriever) are in `serving.testing`, outside this API.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "ServeConfig": "serving.config",
    "Gateway": "serving.gateway",
    "create_app": "serving.app",
    "open_retriever": "serving.retriever",
    "Retriever": "serving.retriever",
    "SearchResult": "serving.retriever",
    "IndexRetriever": "serving.retriever",
    "RayRetrieverAdapter": "serving.retriever",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports('serving', _EXPORTS, globals())
