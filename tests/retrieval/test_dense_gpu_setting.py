"""`use_gpu=true` where FAISS cannot use a GPU: the index works on the CPU and says so in a logged warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrieval import dense


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(dense, "_warned", set())


def _index(use_gpu: bool) -> dense.DenseIndex:
    idx = dense.DenseIndex.create("flat", 4, {"use_gpu": use_gpu}, 1, None)
    idx.add(np.eye(4, dtype="float32"), np.arange(1, 5))
    return idx


def test_use_gpu_without_a_gpu_warns_once_and_searches_on_the_cpu(caplog, monkeypatch):
    monkeypatch.setattr(dense, "gpu_unavailable", lambda: "FAISS sees no CUDA device")
    with caplog.at_level(logging.WARNING, logger="retrieval.dense"):
        idx = _index(True)
        _index(True)
        _, rows = idx.search(np.eye(4, dtype="float32")[:1], 1)
    assert rows.tolist() == [[1]]
    warnings = [r.getMessage() for r in caplog.records if r.name == "retrieval.dense"]
    assert warnings == ["index use_gpu=true, but FAISS sees no CUDA device: the dense index searches on the CPU"]


def test_no_warning_without_use_gpu(caplog):
    with caplog.at_level(logging.WARNING, logger="retrieval.dense"):
        _index(False).search(np.eye(4, dtype="float32")[:1], 1)
    assert not [r for r in caplog.records if r.name == "retrieval.dense"]


def test_this_cpu_faiss_build_reports_why_it_cannot_use_a_gpu():
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        assert dense.gpu_unavailable() is None
    else:
        assert dense.gpu_unavailable()
