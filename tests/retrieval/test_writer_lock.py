"""Two writers on one index directory (two processes, or two index objects in one process) serialise
on the directory's writer lock, and each write lands on top of the other's generation."""

from __future__ import annotations

import json
import multiprocessing as mp
import traceback

from retrieval.index import RetrievalIndex
from retrieval.types import Document

DOCS = {"w1.md": "Zorblatt the blue heron nests on the northern cliffs.",
        "w2.md": "Quendril moss grows only in the salt caves of the south."}


def _writer(path: str, doc_id: str, barrier, errors) -> None:
    try:
        import crash_hook

        # a pause at each save step, so the two saves overlap if nothing serialises them
        crash_hook.install(pause_s=0.3)
        idx = RetrievalIndex.open(path, verify=False)
        idx.embed(["warm up"])  # load the model before the race, not inside it
        barrier.wait(timeout=240)
        idx.add_documents([Document(doc_id, DOCS[doc_id])])
        idx.close()
    except BaseException:
        errors.put(f"{doc_id}: {traceback.format_exc()}")
        raise


def _assert_both_added(path, n0: int, gen0: int) -> None:
    idx = RetrievalIndex.open(path)  # checksums verified
    assert len(idx) == n0 + 2
    for doc_id, text in DOCS.items():
        assert [c.text for c in idx.chunks_for_doc(doc_id)] == [text]
    assert idx.manifest["generation"] == gen0 + 2
    data = {p.name for p in path.iterdir() if p.name.startswith(("store.", "dense.", "sparse.", "tomb."))}
    assert data == set(idx.manifest["files"])  # neither writer swept the other's segment
    idx.close()


def _state(path) -> tuple[int, int]:
    idx = RetrievalIndex.open(path, verify=False)
    n0, gen0 = len(idx), idx.manifest["generation"]
    idx.close()
    return n0, gen0


def test_two_processes_add_concurrently(index_copy):
    n0, gen0 = _state(index_copy)
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch/FAISS threads
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(index_copy), d, barrier, errors)) for d in DOCS]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert [p.exitcode for p in procs] == [0, 0], failures
    _assert_both_added(index_copy, n0, gen0)


def test_stale_index_object_writes_on_top_of_the_latest_generation(index_copy):
    n0, gen0 = _state(index_copy)
    a = RetrievalIndex.open(index_copy, verify=False)
    b = RetrievalIndex.open(index_copy, verify=False)  # both on generation gen0
    a.add_documents([Document("w1.md", DOCS["w1.md"])])
    b.add_documents([Document("w2.md", DOCS["w2.md"])])  # b is stale: it must reload, not clobber a's write
    assert [c.doc_id for c in b.chunks_for_doc("w1.md")] == ["w1.md"]
    # a delete through the stale `a` sees the document b added
    assert a.delete_documents(["w2.md"]) == 1
    a.close()
    b.close()
    man = json.loads((index_copy / "manifest.json").read_text())
    # three writes (a merge of the segment the delete emptied may follow: one more generation)
    assert man["generation"] >= gen0 + 3 and man["counts"]["chunks"] == n0 + 1
