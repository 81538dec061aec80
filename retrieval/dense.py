"""The dense (FAISS) side: inner-product search over L2-normalised vectors, ids = store rows.

Types: flat (exact), ivf_flat, ivf_pq, hnsw. Vectors are spread over `shards` FAISS indexes by
row % shards, so shard actors can each load one. Each segment of an index has its own DenseIndex and is
never changed once written: deleted rows are tombstones of the index, excluded from a search by an
IDSelector (`exclude`), until a merge leaves them out of the merged segment.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)
_warned: set[str] = set()  # one warning per reason and process (an index is copied at every write)


def choose_type(index_type: str, n: int) -> str:
    if index_type != "auto":
        return index_type
    if n < 50_000:
        return "flat"
    if n < 2_000_000:
        return "hnsw"
    return "ivf_pq"


def _faiss():
    import faiss

    return faiss


@functools.lru_cache(maxsize=1)
def gpu_unavailable() -> str | None:
    """Why FAISS cannot search on a GPU in this process, or None when it can (asked once per process)."""
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return "this FAISS build has no GPU support (install faiss-gpu-cu12: pip install 'raft-stack[gpu]')"
    if faiss.get_num_gpus() < 1:
        return "FAISS sees no CUDA device"
    return None


def _warn_cpu_fallback(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        log.warning("index use_gpu=true, but %s: the dense index searches on the CPU", why)


def _largest_divisor(dim: int, m: int) -> int:
    for cand in range(min(m, dim), 0, -1):
        if dim % cand == 0:
            return cand
    return 1


def make_params(kind: str, dim: int, n: int, cfg: Any) -> dict:
    """Concrete FAISS parameters for `kind` at corpus size n (recorded in the manifest)."""
    if kind == "hnsw":
        return {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction, "efSearch": cfg.hnsw_ef_search}
    if kind in ("ivf_flat", "ivf_pq"):
        nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(max(n, 1))))
        nlist = max(1, min(nlist, max(1, n // 39)))  # FAISS wants ~39 training points per cell
        p = {"nlist": nlist, "nprobe": min(cfg.ivf_nprobe, nlist)}
        if kind == "ivf_pq":
            p["m"] = _largest_divisor(dim, cfg.pq_m)
            p["nbits"] = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(max(2, n // 39)))))
        return p
    return {}


class DenseIndex:
    def __init__(self, kind: str, dim: int, params: dict, shards: list):
        self.kind, self.dim, self.params, self.shards = kind, dim, params, shards
        self._gpu = None
        if params.get("use_gpu") and kind != "hnsw":
            why = gpu_unavailable()
            if why:  # a warning, not an error: the flag travels in the manifest to hosts without a GPU
                _warn_cpu_fallback(why)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, kind: str, dim: int, params: dict, n_shards: int, train: np.ndarray | None) -> "DenseIndex":
        faiss = _faiss()
        shards = []
        for _ in range(n_shards):
            if kind == "flat":
                idx = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            elif kind == "hnsw":
                base = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = params["efConstruction"]
                base.hnsw.efSearch = params["efSearch"]
                idx = faiss.IndexIDMap2(base)
            elif kind in ("ivf_flat", "ivf_pq"):
                quant = faiss.IndexFlatIP(dim)
                if kind == "ivf_flat":
                    idx = faiss.IndexIVFFlat(quant, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
                else:
                    idx = faiss.IndexIVFPQ(quant, dim, params["nlist"], params["m"], params["nbits"],
                                           faiss.METRIC_INNER_PRODUCT)
                idx.own_fields = True
                quant.this.disown()
                if train is None or len(train) == 0:
                    raise RetrievalError(f"{kind} needs training vectors; build with at least one chunk")
                idx.train(np.ascontiguousarray(train[: max(params["nlist"] * 64, 20_000)], dtype="float32"))
                idx.nprobe = params["nprobe"]
            else:
                raise RetrievalError(f"unknown index_type {kind!r}; choose auto, flat, ivf_flat, ivf_pq or hnsw")
            shards.append(idx)
        return cls(kind, dim, params, shards)

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype="float32")
        if vectors.shape[1] != self.dim:
            raise RetrievalError(f"vectors have dimension {vectors.shape[1]}, the index expects {self.dim}")
        rows = np.asarray(rows, dtype="int64")
        n = len(self.shards)
        for s in range(n):
            mask = rows % n == s
            if mask.any():
                self.shards[s].add_with_ids(vectors[mask], rows[mask])
        self._gpu = None

    def reconstruct(self, rows: np.ndarray) -> np.ndarray | None:
        """The stored vectors of `rows` (None when this index type cannot give them back exactly: IVF-PQ
        keeps codes, not vectors)."""
        if self.kind == "ivf_pq":
            return None
        faiss = _faiss()
        rows = np.asarray(rows, dtype="int64")
        out = np.zeros((len(rows), self.dim), dtype="float32")
        n = len(self.shards)
        for s in range(n):
            mask = rows % n == s
            if not mask.any():
                continue
            idx = self.shards[s]
            if self.kind == "ivf_flat":
                idx.set_direct_map_type(faiss.DirectMap.Hashtable)
            out[mask] = np.stack([idx.reconstruct(int(r)) for r in rows[mask]])
        return out

    # ---- search -------------------------------------------------------------------------------
    def _params(self, sel, widen: int = 1):
        faiss = _faiss()
        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(self.params["efSearch"] * widen)
        elif self.kind.startswith("ivf"):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(min(self.params["nlist"], self.params["nprobe"] * widen))
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               widen: int = 1, exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of shape (nq, k), rows -1 where fewer than k were found; merged over shards.
        `allowed`: only these rows; `exclude`: a FAISS IDSelector of rows to skip (tombstones), used when
        `allowed` is None."""
        faiss = _faiss()
        q = np.ascontiguousarray(queries, dtype="float32")
        sel = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype="int64"))
        elif exclude is not None:
            sel = exclude
        params = self._params(sel, widen)
        need_k = k
        outs_d, outs_i = [], []
        shards = self._gpu_shards() if sel is None else self.shards
        for s in shards:
            if s.ntotal == 0:
                continue
            kk = min(need_k, int(s.ntotal))
            d, i = s.search(q, kk, params=params if sel is not None or self.kind != "flat" else None)
            outs_d.append(d)
            outs_i.append(i)
        if not outs_d:
            return np.full((len(q), k), -np.inf, dtype="float32"), np.full((len(q), k), -1, dtype="int64")
        d = np.concatenate(outs_d, axis=1)
        i = np.concatenate(outs_i, axis=1)
        d = np.where(i < 0, -np.inf, d)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        d = np.take_along_axis(d, order, axis=1)
        i = np.take_along_axis(i, order, axis=1)
        if d.shape[1] < k:
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        return d, i

    def _gpu_shards(self):
        """GPU copies of the shards when use_gpu is set and FAISS can use a GPU; else the CPU shards (the
        constructor has warned). HNSW has no GPU version in FAISS."""
        if not self.params.get("use_gpu") or self.kind == "hnsw" or gpu_unavailable():
            return self.shards
        if self._gpu is None:
            faiss = _faiss()
            try:
                self._res = faiss.StandardGpuResources()
                self._gpu = [faiss.index_cpu_to_gpu(self._res, 0, s) for s in self.shards]
            except Exception as e:  # e.g. out of GPU memory
                _warn_cpu_fallback(f"copying it to the GPU failed ({type(e).__name__}: {e})")
                return self.shards
        return self._gpu

    # ---- persistence --------------------------------------------------------------------------
    def save(self, directory: Path, segment: int) -> list[str]:
        faiss = _faiss()
        names = []
        for n, s in enumerate(self.shards):
            name = f"dense.s{segment}.p{n}.faiss"
            tmp = directory / (name + ".tmp")
            faiss.write_index(s, str(tmp))
            _fsync_rename(tmp, directory / name)
            names.append(name)
        return names

    @classmethod
    def load(cls, directory: Path, kind: str, dim: int, params: dict, files: list[str],
             mmap: bool = False) -> "DenseIndex":
        faiss = _faiss()
        shards = []
        for name in files:
            flags = faiss.IO_FLAG_MMAP if mmap and kind != "hnsw" else 0
            idx = faiss.read_index(str(directory / name), flags)
            if kind.startswith("ivf"):
                idx.nprobe = params.get("nprobe", 16)
            elif kind == "hnsw":
                faiss.downcast_index(idx.index).hnsw.efSearch = params.get("efSearch", 64)
            shards.append(idx)
        return cls(kind, dim, params, shards)


def _fsync_rename(tmp: Path, dst: Path) -> None:
    import os

    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
