"""Embedding large corpora through Ray Data: chunk texts flow through `map_batches` to a fixed pool of
embedder actors (each loads the model once), so a cluster's CPUs/GPUs embed in parallel.

Used by `RetrievalIndex.build` when `config.ray` is true (`raft index build --ray`); the embedding cache
still decides which texts need embedding at all.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np


class _EmbedBatch:
    """Ray Data callable class: one per actor, the model loaded in __init__."""

    def __init__(self, embedder: str, device: str | None, batch_size: int, max_seq_length: int | None):
        from retrieval.embedders import Embedder

        self.embedder = Embedder(embedder, device, batch_size, max_seq_length)

    def __call__(self, batch: dict) -> dict:
        vecs = self.embedder.encode(list(batch["text"]))
        return {"i": batch["i"], "vector": list(vecs)}


def ray_encoder(cfg) -> Callable[[list[str]], np.ndarray]:
    """encode(texts) -> (n, dim) float32, computed by a Ray Data actor pool of `cfg.ray_actors`."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)

    def encode(texts: list[str]) -> np.ndarray:
        ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)])
        gpus = 1 if (cfg.device or "").startswith("cuda") else 0
        out = ds.map_batches(
            _EmbedBatch,
            fn_constructor_kwargs={"embedder": cfg.embedder, "device": cfg.device,
                                   "batch_size": cfg.batch_size, "max_seq_length": cfg.max_seq_length},
            batch_size=max(cfg.batch_size, 256),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.ray_actors),
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
        ).take_all()
        out.sort(key=lambda r: int(r["i"]))
        return np.ascontiguousarray(np.stack([np.asarray(r["vector"], dtype="float32") for r in out]))

    return encode
