"""The index under concurrent use and hostile input: searches and writes at the same time (writes swap
generations, searches never see half of one), bounded work per search (deadline, term cap), metadata
SQLite could not read back refused at the door, and a health read that touches no SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from retrieval.errors import RetrievalError
from retrieval.filters import normalize_filter
from retrieval.index import RetrievalIndex
from retrieval.store import Store, deadline
from retrieval.types import Document

QUESTION = "Which island is the largest?"


def test_searches_and_writes_run_together_without_errors(index_copy):
    idx = RetrievalIndex.open(index_copy)
    idx.embed(["warm up"])
    errors: list[str] = []
    seen_tenants: set = set()
    stop = threading.Event()

    def searcher(mode: str, flt):
        while not stop.is_set():
            try:
                hits = idx.search(QUESTION, k=4, mode=mode, filter=flt)
                assert hits, (mode, flt)
                seen_tenants.update(h.chunk.metadata.get("tenant") for h in hits)
                if flt:
                    assert {h.chunk.metadata["tenant"] for h in hits} == {flt["tenant"]}
            except Exception as e:  # collected: a thread's assertion would otherwise vanish
                errors.append(f"{mode} {flt}: {type(e).__name__}: {e}")
                return

    threads = [threading.Thread(target=searcher, args=a) for a in
               (("dense", {"tenant": "globex"}), ("hybrid", None), ("bm25", {"tenant": "acme"}))]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            idx.add_documents([Document(f"live{i}", f"Island number {i} of the live chain is small.", "Live",
                                        "", {"tenant": "globex"})])
            if i % 2:
                assert idx.delete_documents([f"live{i - 1}"]) == 1
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    assert sorted(d for d in idx.doc_ids() if d.startswith("live")) == ["live1", "live3", "live5"]
    assert "live5" in {h.chunk.doc_id for h in idx.search("live chain island", k=10, mode="bm25")}
    idx.close()


def test_a_query_is_not_held_behind_an_ingests_embedding(index_copy):
    """Ingest embeds in slices through the embedder gate; a query waits one slice at most."""
    idx = RetrievalIndex.open(index_copy)
    idx.embed(["warm up"])
    encode = idx.embedder.encode

    def slow_bulk(texts):  # an ingest slice costs 0.2 s; a query (one text) costs what it costs
        if len(texts) > 1:
            time.sleep(0.2)
        return encode(texts)

    idx.embedder.encode = slow_bulk
    try:
        text = " ".join(f"Sentence {i} about the glass towers and their amber herons." for i in range(300))
        ingest = threading.Thread(target=idx.add_documents, args=([Document("big", text)],))
        t0 = time.monotonic()
        ingest.start()
        time.sleep(0.5)  # the ingest is embedding now
        q0 = time.monotonic()
        hits = idx.search(QUESTION, k=3, mode="dense")
        took = time.monotonic() - q0
        ingest.join(120)
        ingest_s = time.monotonic() - t0
    finally:
        idx.embedder.encode = encode
    assert hits and ingest_s > 3.0  # the ingest really was long
    # one slice (0.2 s asleep + a few chunks encoded) and its own embedding at most, not the whole ingest
    assert took < ingest_s / 3, f"the query waited {took:.2f} s during a {ingest_s:.1f} s ingest"
    assert idx.chunks_for_doc("big")
    idx.close()


def test_deadline_interrupts_a_running_sqlite_query(index_copy):
    idx = RetrievalIndex.open(index_copy)
    con = idx.segments[0].store.con
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadline(time.monotonic() + 0.2):
            con.execute(slow).fetchall()  # would never end on its own
    assert time.monotonic() - t0 < 2.0
    assert idx.search(QUESTION, k=1, mode="bm25")  # the connection is fine afterwards
    with pytest.raises(TimeoutError):
        idx.search(QUESTION, k=3, mode="hybrid", deadline_at=time.monotonic() - 1)
    idx.close()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), {"deep": [1.0, float("nan")]}])
def test_non_finite_metadata_is_refused_and_every_tenant_can_still_search(index_copy, bad):
    idx = RetrievalIndex.open(index_copy)
    n0, gen0 = len(idx), idx.manifest["generation"]
    with pytest.raises(RetrievalError, match="finite"):
        idx.add_documents([Document("poison", "Poisoned text.", "", "", {"tenant": "acme", "score": bad})])
    assert len(idx) == n0 and idx.manifest["generation"] == gen0  # refused before any work
    for flt in ({"tenant": "acme"}, {"tenant": "globex"}):
        for mode in ("dense", "hybrid", "bm25"):
            assert idx.search(QUESTION, k=2, mode=mode, filter=flt)
    idx.close()


def test_store_refuses_non_finite_metadata_itself(tmp_path):
    """The store is the last line: even a caller that skips the index's check cannot write it."""
    from retrieval.types import Chunk

    st = Store(tmp_path / "s.sqlite", create=True)
    with pytest.raises(RetrievalError, match="finite"):
        st.add_chunks([Chunk("c1", "d1", "text", metadata={"x": float("nan")})], ["h1"], [0])
    assert st.count() == 0
    st.add_chunks([Chunk("c2", "d2", "text", metadata={"x": 1.5, "big": 10 ** 30})], ["h2"], [1])
    assert len(st.rows_matching(normalize_filter({"x": 1.5}))) == 1 and st.count() == 1
    st.close()
    with pytest.raises(sqlite3.ProgrammingError):
        st.count()


@pytest.mark.parametrize("flt, why", [({"n": 2 ** 80}, "64-bit"), ({"n": float("nan")}, "finite"),
                                      ({"n": "\ud800"}, "surrogate"),
                                      ({"n": [1, {"a": 1}]}, "string, number")])
def test_filters_sqlite_cannot_bind_are_retrieval_errors(built_index, flt, why):
    idx = RetrievalIndex.open(built_index)
    with pytest.raises(RetrievalError, match=why):
        idx.search(QUESTION, k=2, mode="bm25", filter=flt)
    idx.close()


def test_health_reads_the_manifest_not_sqlite(index_copy):
    idx = RetrievalIndex.open(index_copy)
    n = len(idx)
    for seg in idx.segments:
        seg.store.close()  # any SQLite read would now raise
    h = idx.health()
    assert h["chunks"] == n and h["generation"] == idx.manifest["generation"] and h["index_type"] == "flat"


def _open_store_files(index_dir) -> list[str]:
    """Store files of this index that this process holds open (other tests' indexes may still be open)."""
    import os

    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{index_dir}/store.s"):
            out.append(os.path.basename(target))
    return out


def test_a_merged_away_segment_stays_readable_until_its_last_reader_ends_then_closes(index_copy):
    idx = RetrievalIndex.open(index_copy)
    n0 = len(idx)
    with idx.reading() as snap:
        idx.add_documents([Document("late", "A late document about islands.")])
        assert snap.count() == n0 and len(idx) == n0 + 1  # the reader keeps its own snapshot
        idx.merge(full=True)  # every segment of `snap` is merged away and its files deleted
        assert len(snap.get_rows(snap.segments[0].rows[:3])) == 3  # still readable through open handles
    with pytest.raises(sqlite3.ProgrammingError):
        snap.segments[0].store.count()  # closed as its reader let go
    for i in range(3):  # readers on other threads open their own connections to each segment
        idx.add_documents([Document(f"more{i}", "More islands.")])
        reader = threading.Thread(target=idx.search, args=(QUESTION,), kwargs={"mode": "bm25"})
        reader.start()
        idx.search(QUESTION, mode="hybrid")
        reader.join(60)
        idx.merge(full=True)
    current = {s["store"] for s in idx.manifest["segments"]}
    held = _open_store_files(index_copy.resolve())
    assert set(held) == current, held  # no merged-away segment held open
    idx.close()


def test_a_thread_new_to_a_swept_segment_reads_it_through_the_open_connection(index_copy):
    """A gateway's search thread that never read a segment meets it in a snapshot after a merge deleted its
    files: it reads the rows (connecting by path would have created an empty database there: "no such
    table: chunks"), and no file reappears where the merge deleted one."""
    idx = RetrievalIndex.open(index_copy)
    with idx.reading() as snap:
        store = snap.segments[0].store
        idx.add_documents([Document("late", "A late document about islands.")])
        idx.merge(full=True)
        assert not store.path.exists()
        rows = snap.segments[0].rows[:3]
        got: list = []
        reader = threading.Thread(target=lambda: got.append(snap.get_rows(rows)))
        reader.start()
        reader.join(60)
        assert len(got) == 1 and len(got[0]) == 3
        assert not store.path.exists()
    idx.close()


def test_open_follows_a_commit_that_swept_the_generation_it_read(index_copy, monkeypatch):
    """A background merge (or another process) commits and sweeps the files of the generation an open()
    just read: the open reads the newer manifest and succeeds, instead of failing on a missing file."""
    import retrieval.index as index_mod

    writer = RetrievalIndex.open(index_copy)
    writer.add_documents([Document("ferry", "The night ferry leaves at ten.", "Ferry")])
    writer.wait_for_merges()
    read = writer.manifest
    assert len(read["segments"]) == 2
    real_check, calls = index_mod._check_files, []

    def check_after_a_commit(d, man, verify):
        calls.append(man["generation"])
        if len(calls) == 1:  # between reading the manifest and opening its files, a full merge lands
            assert writer.merge(full=True) == 2
            assert not any((index_copy / s["sparse"]).exists() for s in man["segments"])
        real_check(d, man, verify)

    monkeypatch.setattr(index_mod, "_check_files", check_after_a_commit)
    idx = RetrievalIndex.open(index_copy)
    assert calls == [read["generation"], read["generation"] + 1]
    assert idx.manifest["generation"] == read["generation"] + 1 and len(idx.manifest["segments"]) == 1
    assert "ferry" in idx.doc_ids() and len(idx) == len(writer)
    assert idx.search(QUESTION, k=2)
    idx.close()
    writer.close()


def test_open_reports_a_missing_file_when_no_writer_moved_on(index_copy):
    idx = RetrievalIndex.open(index_copy)
    idx.add_documents([Document("ferry", "The night ferry leaves at ten.", "Ferry")])
    idx.close()
    sparse = idx.manifest["segments"][-1]["sparse"]
    (index_copy / sparse).unlink()
    with pytest.raises(RetrievalError, match=f"{sparse} named by the manifest is missing"):
        RetrievalIndex.open(index_copy)



def test_refresh_follows_a_commit_that_swept_the_generation_it_read(index_copy, monkeypatch):
    """A Ray shard refreshes after a delete while its writer's background merge commits and sweeps the
    delete's tombstones and a segment: the refresh opens the merged generation instead of staying,
    silently, on the generation before the delete, where the deleted document is still found."""
    reader = RetrievalIndex.open(index_copy)
    writer = RetrievalIndex.open(index_copy)
    writer.add_documents([Document("ferry", "The night ferry leaves at ten.", "Ferry")])
    writer.wait_for_merges()
    gone = writer.doc_ids()[0]  # a document of the big segment: its tombstones leave the merge policy idle
    assert writer.delete_documents([gone]) > 0
    writer.wait_for_merges()
    read = writer.manifest
    assert len(read["segments"]) == 2 and read["tombstones"]
    real_load, loaded = reader._load, []

    def load_after_a_commit(man, have):
        loaded.append(man["generation"])
        if len(loaded) == 1:  # between reading the manifest and opening its files, a full merge lands
            assert writer.merge(full=True) == 2
            assert not (index_copy / read["tombstones"]).exists()
        return real_load(man, have)

    monkeypatch.setattr(reader, "_load", load_after_a_commit)
    assert reader.refresh(force=True) is True
    assert loaded == [read["generation"], read["generation"] + 1]
    assert reader.manifest["generation"] == writer.manifest["generation"]
    assert reader.chunks_for_doc(gone) == [] and reader.chunks_for_doc("ferry") and len(reader) == len(writer)
    reader.close()
    writer.close()


def test_a_forced_refresh_reports_a_generation_it_cannot_open(index_copy):
    """Damage (a file missing while no writer moves on) leaves a plain refresh() on the old generation, to
    look again at the next call; a forced one, whose caller was told a write landed, raises it."""
    reader = RetrievalIndex.open(index_copy)
    writer = RetrievalIndex.open(index_copy)
    writer.add_documents([Document("ferry", "The night ferry leaves at ten.", "Ferry")])
    writer.close()
    before = reader.manifest["generation"]
    (index_copy / writer.manifest["segments"][-1]["sparse"]).unlink()
    assert reader.refresh() is False and reader.manifest["generation"] == before
    with pytest.raises((RetrievalError, OSError)):
        reader.refresh(force=True)
    assert reader.manifest["generation"] == before and reader.search(QUESTION, k=1)
    reader.close()
