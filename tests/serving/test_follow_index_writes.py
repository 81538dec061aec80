"""A running gateway searches what another process committed to its index (`raft index add` beside a live
`raft serve`), without a write of its own: the local retriever installs the newer generation, the Ray
retriever reloads its shard actors, each when the manifest changed (one stat per search otherwise)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.index import RetrievalIndex
from retrieval.types import Document

NEW_DOC = "# Zorblat\n\nThe Zorblat festival fills the harbour with lanterns every spring."


def _add_from_another_process(index_dir: Path, tmp_path: Path) -> None:
    doc = tmp_path / "zorblat.md"
    doc.write_text(NEW_DOC)
    r = subprocess.run([sys.executable, "-m", "raft.cli", "index", "add", str(index_dir), str(doc)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr


def test_local_retriever_sees_another_process_commit(index_retriever, tmp_path):
    index_dir = index_retriever.index.path

    async def top_doc():
        res = await index_retriever.asearch("Zorblat festival lanterns", 1, "bm25", None)
        return [h.chunk.doc_id for h in res.hits]

    assert asyncio.run(top_doc()) != ["zorblat.md"]
    gen = index_retriever.index.health()["generation"]
    _add_from_another_process(index_dir, tmp_path)
    assert asyncio.run(top_doc()) == ["zorblat.md"]
    assert index_retriever.index.health()["generation"] == gen + 1
    assert asyncio.run(index_retriever.adoc_tenants("zorblat.md")) == {None}


def test_refresh_is_a_stat_when_nothing_changed(small_real_index, tmp_path, monkeypatch):
    import shutil

    import retrieval.index as index_mod

    copy = tmp_path / "idx"
    shutil.copytree(small_real_index, copy)
    reader, writer = RetrievalIndex.open(copy), RetrievalIndex.open(copy)
    assert reader.refresh() is False  # first call reads the manifest once
    opened = []
    real_open = index_mod.RetrievalIndex.open
    monkeypatch.setattr(index_mod.RetrievalIndex, "open",
                        classmethod(lambda cls, *a, **k: opened.append(a) or real_open(*a, **k)))
    assert reader.refresh() is False and opened == []
    writer.add_documents([Document(doc_id="new.md", text="A new pier was built in the north harbour.",
                                   title="Pier")])
    # a write adds a segment: the reader opens that segment, never the whole index again
    assert reader.refresh() is True and opened == []
    assert reader.chunks_for_doc("new.md") and reader.health()["generation"] == writer.health()["generation"]
    assert reader.refresh() is False and opened == []


class _Ref:
    """What `actor.method.remote()` returns, awaitable like a Ray ObjectRef."""

    def __await__(self):
        return asyncio.sleep(0).__await__()


class _Shard:
    def __init__(self):
        self.reloads = 0
        shard = self

        class Reload:
            def remote(self):
                shard.reloads += 1
                return _Ref()

        self.reload = Reload()


class _FakeRay:
    def __init__(self, index_dir: Path):
        self.index_dir, self.shards = str(index_dir), [_Shard(), _Shard()]

    async def asearch(self, query, k, mode, filter, timeout=None):
        return []

    async def aadd_documents(self, docs):
        (Path(self.index_dir) / "manifest.json").write_text('{"generation": 3}')  # its own write
        return ["c1"]


def test_ray_adapter_reloads_shards_when_the_manifest_changes(tmp_path):
    from serving.retriever import RayRetrieverAdapter

    (tmp_path / "manifest.json").write_text('{"generation": 1}')
    fake = _FakeRay(tmp_path)
    adapter = RayRetrieverAdapter(fake)

    async def scenario():
        await adapter.asearch("q", 3, "hybrid", None)
        assert [s.reloads for s in fake.shards] == [0, 0]
        (tmp_path / "manifest.json").write_text('{"generation": 2, "written": "by another process"}')
        await asyncio.gather(*(adapter.asearch("q", 3, "hybrid", None) for _ in range(5)))
        assert [s.reloads for s in fake.shards] == [1, 1]  # once, however many searches came
        await adapter.aadd([Document(doc_id="d", text="t")])  # its own write reloaded the shards itself
        await adapter.asearch("q", 3, "hybrid", None)
        assert [s.reloads for s in fake.shards] == [1, 1]

    asyncio.run(scenario())


@pytest.mark.slow  # Ray actors
def test_ray_retriever_sees_another_process_commit(ray_local, small_real_index, tmp_path):
    import shutil

    from serving.retriever import RayRetrieverAdapter

    copy = tmp_path / "idx"
    shutil.copytree(small_real_index, copy)
    adapter = RayRetrieverAdapter.open(str(copy), num_shards=2, num_embedders=1)
    try:
        async def top_doc():
            return [h.chunk.doc_id for h in (await adapter.asearch("Zorblat festival lanterns", 1, "bm25", None)).hits]

        assert asyncio.run(top_doc()) != ["zorblat.md"]
        _add_from_another_process(copy, tmp_path)
        assert asyncio.run(top_doc()) == ["zorblat.md"]
    finally:
        adapter.close()
