"""RAFT: retrieval-augmented fine-tuning, from corpus to dataset to adapter to a served endpoint.

The stable Python API is what `__all__` names:

    from raft import build_dataset, train_adapter, merge_adapter, evaluate

    build_dataset("docs/", "data/raft", {"teacher": {"kind": "extractive"}})
    summary = train_adapter("configs/train_tiny_cpu.yaml")
    merge_adapter(summary["adapter"], "merged/")

Names are imported on first use, so `import raft` (and `raft --help`) does not load torch or Ray.
Retrieval has its own API: `from retrieval import RetrievalIndex, IndexConfig`.
"""

from __future__ import annotations

from retrieval.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "build_dataset": "raft.api",
    "train_adapter": "raft.api",
    "evaluate": "raft.api",
    "train_reranker": "raft.api",
    "RerankTrainConfig": "raft.rerank.config",
    "merge_adapter": "raft.train.export",
    "resolve_model": "raft.model_source",
    "BuildConfig": "raft.data.config",
    "TrainConfig": "raft.train.config",
    "EvalConfig": "raft.eval.config",
    "load_config": "raft.config",
    "ConfigError": "raft.config",
    "RaftError": "raft.errors",
    "build_messages": "raft.prompt",
    "PROMPT_VERSION": "raft.prompt",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports('raft', _EXPORTS, globals())
