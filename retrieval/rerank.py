"""The optional rerank stage: a sentence-transformers CrossEncoder re-scores the first candidates of a search.

Hybrid search (dense + BM25, fused) is cheap and recall-oriented; a cross-encoder reads the query and each
passage together, which is more precise and costs one transformer pass per (query, passage) pair. So the
stage scores only the first `candidates` hits of the search (after tenant and metadata filters, which are
applied inside the search) and keeps the best k. It is off unless a model is named.

    from retrieval import RetrievalIndex, Reranker

    reranker = Reranker("runs/reranker", candidates=40)      # written by `raft rerank train`
    hits = RetrievalIndex.open("idx").search("what is RAFT?", k=5, rerank=reranker)

The final order mixes the two stages: per query, weight x the cross-encoder's scores (min-max scaled over
the candidates) + (1 - weight) x the search's rank (1 for its first hit down to 0 for its last). Weight 1 is
the cross-encoder alone, 0 the search's order unchanged. `raft rerank train` chooses the weight on its
validation questions and saves it in raft_rerank.json, which is the default here; so a reranker that ranks
worse than the search on those questions leaves the search's order alone instead of replacing it.
A reranked Hit's score is that mixed score (0..1).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from retrieval.config import BaseConfig
from retrieval.errors import RetrievalError
from retrieval.types import Chunk, Hit

log = logging.getLogger(__name__)

RERANK_META = "raft_rerank.json"  # written next to the weights by `raft rerank train`


MAX_CANDIDATES = 1000  # search hits one query may send to the cross-encoder (its cost grows linearly)


class RerankConfig(BaseConfig):
    """The cross-encoder rerank stage (off while `model` is null)."""

    model: str | None = None
    """CrossEncoder directory (what `raft rerank train` writes) or a sentence-transformers CrossEncoder name;
    null: no reranking."""
    candidates: int = Field(40, ge=1, le=MAX_CANDIDATES)
    """Search hits re-scored per query (the best k of them are kept); latency grows linearly with it."""
    batch_size: int = Field(64, ge=1)
    """(query, passage) pairs scored per forward pass."""
    max_length: int | None = Field(None, ge=8)
    """Truncate each (query, passage) pair to this many tokens (null: what the model was trained with)."""
    device: str | None = None
    """torch device ("cpu", "cuda", ...); null picks CUDA when present."""
    weight: float | None = Field(None, ge=0, le=1)
    """Share of the cross-encoder in the final order, the rest being the search's rank: 1 = the cross-encoder
    alone, 0 = the search's order. null: the weight `raft rerank train` chose on its validation questions
    (raft_rerank.json), else 1."""


def pair_text(chunk: Chunk) -> str:
    """What the cross-encoder reads of a chunk: what the embedder reads (title and text), so training pairs
    (raft/rerank/pairs.py) and served pairs are the same text."""
    return chunk.embedding_text()


class _Loaded:
    """One CrossEncoder in memory and the lock that serialises its use (its fast tokenizer is not safe to
    call from two threads at once, and two concurrent forward passes only compete for the same cores)."""

    def __init__(self, model: Any):
        self.model = model
        self.lock = threading.Lock()


_SHARED: dict[tuple, _Loaded] = {}
_SHARED_LOCK = threading.Lock()


def saved_weight(model: str) -> float | None:
    """The fusion weight `raft rerank train` saved beside the model (raft_rerank.json), if any."""
    meta = Path(_resolve(model)) / RERANK_META
    try:
        w = json.loads(meta.read_text(encoding="utf-8")).get("fusion", {}).get("weight")
    except (OSError, ValueError, AttributeError):
        return None
    return float(w) if isinstance(w, (int, float)) and 0 <= w <= 1 else None


def fuse_scores(ce: np.ndarray, weight: float) -> np.ndarray:
    """weight x min-max(ce) + (1 - weight) x the search's rank scaled 1..0 (`ce` is in search order)."""
    n = len(ce)
    if n == 0:
        return np.zeros(0, dtype="float32")
    rank = 1.0 - np.arange(n, dtype="float64") / max(1, n - 1)
    span = float(ce.max() - ce.min())
    scaled = (ce - ce.min()) / span if span > 0 else np.ones(n)
    return (weight * scaled + (1.0 - weight) * rank).astype("float32")


def _resolve(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def _check_is_cross_encoder(path: str) -> None:
    """A plain encoder (e.g. the bundled all-MiniLM-L6-v2) loads as a CrossEncoder with a randomly
    initialised head, whose scores are noise: refuse it, saying what to use instead."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise RetrievalError(f"rerank model {path!r} cannot be loaded ({str(e).strip().splitlines()[0][:200]}); "
                             "give the directory `raft rerank train DATASET --out DIR` wrote, or a "
                             "sentence-transformers CrossEncoder name") from None
    arch = list(getattr(cfg, "architectures", None) or [])
    if arch and not any(a.endswith(("ForSequenceClassification", "ForCausalLM")) for a in arch):
        raise RetrievalError(f"rerank model {path!r} is not a cross-encoder (its config names {', '.join(arch)}, "
                             "without a sequence-classification head), so its scores would be random; train one "
                             "from it with `raft rerank train DATASET --out DIR`")


def _stamp(path: str) -> tuple:
    """What changes when a model directory is replaced (a rerun of `raft rerank train` into the same --out), so
    that the next load reads the new model instead of the one cached for that path."""
    for name in (RERANK_META, "config.json"):
        try:
            st = (Path(path) / name).stat()
        except OSError:
            continue
        return st.st_ino, st.st_mtime_ns
    return ()


def load_cross_encoder(model: str, device: str | None = None, max_length: int | None = None) -> _Loaded:
    """The CrossEncoder for (model, device, max_length), loaded once per process (again once its directory
    was replaced)."""
    path = _resolve(model)
    key = (path, device, max_length, _stamp(path))
    with _SHARED_LOCK:
        got = _SHARED.get(key)
        if got is None:
            for old in [k for k in _SHARED if k[:3] == key[:3]]:  # the replaced model: free its memory
                del _SHARED[old]
            _check_is_cross_encoder(path)
            from sentence_transformers import CrossEncoder

            try:  # a "Loading weights" bar on every load is noise in CLI and server logs (as for the embedder)
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except Exception:
                pass
            try:
                ce = CrossEncoder(path, device=device, max_length=max_length)
            except Exception as e:
                raise RetrievalError(f"cannot load rerank model {model!r} from {path!r}: {e}") from None
            ce.eval()
            got = _SHARED[key] = _Loaded(ce)
        return got


class Reranker:
    """Re-scores search hits with a cross-encoder and keeps the best k. Thread-safe; the model loads on first
    use (or with `load()`), once per process for the same model, device and max_length."""

    def __init__(self, model: str, candidates: int = 40, *, batch_size: int = 64, max_length: int | None = None,
                 device: str | None = None, weight: float | None = None):
        if not isinstance(candidates, int) or isinstance(candidates, bool) or not 1 <= candidates <= MAX_CANDIDATES:
            raise RetrievalError(f"rerank candidates must be an integer from 1 to {MAX_CANDIDATES}, got {candidates!r}")
        if weight is not None and not (isinstance(weight, (int, float)) and 0 <= weight <= 1):
            raise RetrievalError(f"rerank weight must be between 0 and 1 (1: the cross-encoder alone, 0: the "
                                 f"search's order) or None (the trained one), got {weight!r}")
        self.model_name = model
        self.candidates = candidates
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.weight = weight
        self._loaded: _Loaded | None = None
        self._saved: float | None = None  # read with the model, as its weights are: once

    @property
    def fusion_weight(self) -> float:
        """The weight in use: the one given, else the one saved by `raft rerank train`, else 1."""
        if self.weight is not None:
            return float(self.weight)
        saved = self._saved if self._loaded is not None else saved_weight(self.model_name)
        return 1.0 if saved is None else saved

    @classmethod
    def from_config(cls, cfg: RerankConfig | dict | None) -> "Reranker | None":
        """The reranker a RerankConfig names; None when it names no model (reranking off)."""
        if cfg is None:
            return None
        cfg = RerankConfig.model_validate(cfg) if isinstance(cfg, dict) else cfg
        if not cfg.model:
            return None
        return cls(cfg.model, cfg.candidates, batch_size=cfg.batch_size, max_length=cfg.max_length,
                   device=cfg.device, weight=cfg.weight)

    def config(self) -> RerankConfig:
        return RerankConfig(model=self.model_name, candidates=self.candidates, batch_size=self.batch_size,
                            max_length=self.max_length, device=self.device, weight=self.weight)

    def load(self) -> "Reranker":
        """Load the model now (a server checks it at start, not on the first request)."""
        if self._loaded is None:
            self._loaded = load_cross_encoder(self.model_name, self.device, self.max_length)
            self._saved = saved_weight(self.model_name)
        return self

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Relevance of each (query, passage) pair, higher is better."""
        if not pairs:
            return np.zeros(0, dtype="float32")
        loaded = self.load()._loaded
        with loaded.lock:
            s = loaded.model.predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True)
        return np.asarray(s, dtype="float32").reshape(len(pairs), -1)[:, 0]

    def rerank(self, query: str, hits: Sequence[Hit], k: int) -> list[Hit]:
        return self.rerank_batch([query], [hits], k)[0]

    def rerank_batch(self, queries: Sequence[str], hits: Sequence[Sequence[Hit]], k: int) -> list[list[Hit]]:
        """Per query, its first max(k, candidates) hits re-scored and the best k returned (ties keep the
        search's order). All pairs of the batch go through the model together."""
        if len(queries) != len(hits):
            raise RetrievalError(f"rerank_batch: {len(queries)} queries but {len(hits)} hit lists")
        heads = [list(h)[: max(k, self.candidates)] for h in hits]
        ranked = self.rank_texts(queries, [[pair_text(h.chunk) for h in lst] for lst in heads], k)
        return [[replace(lst[i], score=s) for i, s in order] for lst, order in zip(heads, ranked)]

    def rank_texts(self, queries: Sequence[str], texts: Sequence[Sequence[str]],
                   k: int) -> list[list[tuple[int, float]]]:
        """Per query, (position in its texts, score) of its best k texts, best first: the stage on plain
        passages in the search's order (a Ray reranker actor gets texts, not Hits)."""
        scores = self.score_pairs([(q, t) for q, lst in zip(queries, texts) for t in lst])
        weight = self.fusion_weight
        out, at = [], 0
        for lst in texts:
            s = fuse_scores(scores[at:at + len(lst)], weight)
            at += len(lst)
            out.append([(int(i), float(s[i])) for i in np.argsort(-s, kind="stable")[:k]])
        return out

    def __repr__(self) -> str:
        return f"Reranker({self.model_name!r}, candidates={self.candidates})"
