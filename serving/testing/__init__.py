"""Fakes for the gateway's tests and benchmarks; not used by the product and not part of the public API.

- `fake_engine`: a fast fake OpenAI engine (`python -m serving.testing.fake_engine --port 8101`).
- `memory_retriever`: `InMemoryRetriever`, a dependency-free retriever with the index's filter rules.

No product module imports these (a serve config cannot name a fake engine or retriever: `engine.kind` is
a real engine, and retrieval is a real index). They ship in the package, as `raft.testing` does, because
the benchmark scripts use them too.
"""
