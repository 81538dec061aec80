"""Live updates as segments: a write adds a small segment and tombstones, readers see it at once, other
processes' readers and Ray shards open only the new segment, merges keep every live chunk and drop the
tombstoned ones, filters and tenants hold across segments, and a crash during a merge loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crash_hook import CRASH_EXIT_CODE
from retrieval.index import RetrievalIndex
from retrieval.types import Document

QUESTION = "Which island is the largest in the Veloria chain?"
PRELUDE = "import sys; sys.path.insert(0, {dir!r}); import crash_hook; crash_hook.install(**{kwargs!r})\n"


def _doc(i: int, tenant: str = "globex") -> Document:
    return Document(f"seg{i}.md", f"Quorvath number {i}: the largest heron of the live segments nests here.",
                    f"Quorvath {i}", "", {"tenant": tenant})


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _no_merge(path: Path, **cfg) -> None:
    """Set the index's merge settings (stored in its manifest, as a build with that config would)."""
    man = _manifest(path)
    man["config"].update({"background_merge": False, **cfg})
    (path / "manifest.json").write_text(json.dumps(man))


def test_a_write_is_a_new_small_segment_and_the_base_is_untouched(index_copy):
    _no_merge(index_copy)
    idx = RetrievalIndex.open(index_copy)
    base = _manifest(index_copy)["segments"][0]
    stat = {f: (index_copy / f).stat().st_ino for f in _manifest(index_copy)["files"]}
    ids = idx.add_documents([_doc(1)])
    man = _manifest(index_copy)
    assert [s["id"] for s in man["segments"]][0] == base["id"] and len(man["segments"]) == 2
    new = man["segments"][1]
    assert new["chunks"] == len(ids) and new["type"] == "flat"
    assert all((index_copy / f).stat().st_ino == ino for f, ino in stat.items())  # no file rewritten
    for mode in ("dense", "bm25", "hybrid"):  # the writer's own object sees it at once
        assert idx.search("Quorvath heron", k=1, mode=mode)[0].chunk.doc_id == "seg1.md", mode
    idx.close()


def test_tombstones_hide_deleted_and_replaced_chunks_in_every_mode(index_copy):
    _no_merge(index_copy)
    idx = RetrievalIndex.open(index_copy)
    n0 = len(idx)
    geo = len(idx.chunks_for_doc("veloria_geography.md"))
    assert idx.delete_documents(["veloria_geography.md"]) == geo
    man = _manifest(index_copy)
    assert man["counts"]["tombstones"] == geo and man["counts"]["chunks"] == n0 - geo and len(man["segments"]) == 1
    idx.add_documents([Document("v.md", "first version: amber quorvath", metadata={"tenant": "acme"})])
    idx.add_documents([Document("v.md", "second version: amber quorvath", metadata={"tenant": "acme"})])
    for view in (idx, RetrievalIndex.open(index_copy)):
        for mode in ("dense", "bm25", "hybrid"):
            for flt in (None, {"tenant": "acme"}):
                hits = view.search(QUESTION + " amber quorvath", k=50, mode=mode, filter=flt)
                docs = [h.chunk.doc_id for h in hits]
                assert "veloria_geography.md" not in docs, (mode, flt)
                assert [h.chunk.text for h in hits if h.chunk.doc_id == "v.md"] == ["second version: amber quorvath"]
        assert [c.text for c in view.chunks_for_doc("v.md")] == ["second version: amber quorvath"]
        assert view.chunks_for_doc("veloria_geography.md") == [] and len(view) == n0 - geo + 1
    idx.close()


def test_merges_keep_live_chunks_drop_tombstones_and_keep_rows(index_copy):
    _no_merge(index_copy, max_segments=3)
    idx = RetrievalIndex.open(index_copy)
    ids = {}
    for i in range(6):
        ids[i] = idx.add_documents([_doc(i)])
        assert len(idx.segments) <= 3  # the write that passed the threshold merged before it returned
    idx.delete_documents(["seg2.md"])
    before = {h.chunk.chunk_id: round(h.score, 5) for h in idx.search("Quorvath heron", k=20, mode="dense")}
    idx.merge(full=True)  # the delete emptied a segment, which its write merged away already
    man = _manifest(index_copy)
    assert len(man["segments"]) == 1 and man["counts"]["tombstones"] == 0 and man["tombstones"] is None
    after = {h.chunk.chunk_id: round(h.score, 5) for h in idx.search("Quorvath heron", k=20, mode="dense")}
    assert after == before and not set(ids[2]) & set(after)
    assert sorted(d for d in idx.doc_ids() if d.startswith("seg")) == [f"seg{i}.md" for i in (0, 1, 3, 4, 5)]
    reopened = RetrievalIndex.open(index_copy)  # checksums of the merged segment verified
    assert len(reopened) == len(idx) and reopened.get(ids[5])[0].doc_id == "seg5.md"
    on_disk = {p.name for p in index_copy.iterdir() if p.name.startswith(("store.", "dense.", "sparse.", "tomb."))}
    assert on_disk == set(man["files"])
    idx.close()


def test_background_merge_runs_after_the_write_that_made_it_due(index_copy):
    man = _manifest(index_copy)
    man["config"].update({"max_segments": 2, "background_merge": True})
    (index_copy / "manifest.json").write_text(json.dumps(man))
    idx = RetrievalIndex.open(index_copy)
    for i in range(4):
        idx.add_documents([_doc(i)])
    idx.wait_for_merges(120)
    assert idx.merge_error is None and len(_manifest(index_copy)["segments"]) <= 2
    assert {f"seg{i}.md" for i in range(4)} <= set(idx.doc_ids())
    idx.close()


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_and_tenants_hold_across_segments(index_copy, mode):
    _no_merge(index_copy)
    idx = RetrievalIndex.open(index_copy)
    for i in range(3):
        idx.add_documents([_doc(10 + i, "globex"), _doc(20 + i, "acme")])
    idx.delete_documents(["seg21.md"])
    for tenant in ("acme", "globex"):
        hits = idx.search("Quorvath, the largest heron of the live segments", k=8, mode=mode,
                          filter={"tenant": tenant})
        assert hits and {h.chunk.metadata["tenant"] for h in hits} == {tenant}
        docs = {h.chunk.doc_id for h in hits}
        assert docs & {f"seg{10 + i if tenant == 'globex' else 20 + i}.md" for i in range(3)}  # new segments
        assert "seg21.md" not in docs
        if mode != "bm25":
            assert len(hits) == 8  # a filter inside the search still returns k
    assert idx.search(QUESTION, k=3, mode=mode, filter={"tenant": "nobody"}) == []
    idx.close()


def test_a_reader_and_a_shard_open_only_the_new_segment(index_copy):
    from retrieval.ray_retriever import ShardServer

    _no_merge(index_copy)
    reader = RetrievalIndex.open(index_copy)
    shard = ShardServer(str(index_copy), 0, 2)
    base_reader, base_shard = reader.segments[0], shard.idx.segments[0]
    writer = RetrievalIndex.open(index_copy)
    writer.add_documents([_doc(1), _doc(2), _doc(3), _doc(4)])
    assert reader.refresh() and shard.reload() == writer.manifest["generation"]
    assert reader.segments[0] is base_reader and shard.idx.segments[0] is base_shard  # nothing reloaded
    assert reader.search("Quorvath heron", k=1, mode="bm25")[0].chunk.doc_id.startswith("seg")
    vec = writer.embed(["Quorvath heron"])
    got = shard.search(vec, ["Quorvath heron"], 4, "hybrid", {}, 20)[0]
    rows = [r for key in ("dense", "bm25") for r, _, _ in got[key]]
    assert rows and all(r % 2 == 0 for r in rows)  # this shard's partition only
    assert any(c["doc_id"].startswith("seg") for _, _, c in got["bm25"])
    for x in (reader, writer, shard.idx):
        x.close()


MERGE = textwrap.dedent("""
    import sys
    from retrieval.index import RetrievalIndex
    idx = RetrievalIndex.open(sys.argv[1])
    idx.merge(full=True)
    print("finished")
""")


@pytest.mark.parametrize("point", ["after_store", "after_dense", "after_merge", "before_manifest"])
def test_a_crash_during_a_merge_leaves_the_last_committed_state(index_copy, point):
    _no_merge(index_copy)
    idx = RetrievalIndex.open(index_copy)
    for i in range(3):
        idx.add_documents([_doc(i)])
    idx.delete_documents(["seg1.md", "veloria_history.md"])
    state = (len(idx), sorted(idx.doc_ids()), [h.chunk.chunk_id for h in idx.search(QUESTION, k=5)])
    man0 = _manifest(index_copy)
    idx.close()
    code = PRELUDE.format(dir=str(Path(__file__).parent), kwargs={"crash_at": point}) + MERGE
    r = subprocess.run([sys.executable, "-c", code, str(index_copy)], capture_output=True, text=True, timeout=300)
    assert r.returncode == CRASH_EXIT_CODE and "finished" not in r.stdout, r.stderr[-2000:]
    assert _manifest(index_copy) == man0
    idx = RetrievalIndex.open(index_copy)  # every checksum verified
    assert (len(idx), sorted(idx.doc_ids()), [h.chunk.chunk_id for h in idx.search(QUESTION, k=5)]) == state
    # the merge works after the crash (all the committed segments into one) and sweeps what it left
    assert idx.merge(full=True) == len(man0["segments"]) > 1
    on_disk = {p.name for p in index_copy.iterdir() if p.name.startswith(("store.", "dense.", "sparse.", "tomb."))}
    assert on_disk == set(_manifest(index_copy)["files"])
    assert sorted(idx.doc_ids()) == state[1]
    idx.close()
