"""A process that dies while saving leaves the previous index readable (manifest written last)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crash_hook import CRASH_EXIT_CODE
from retrieval.index import RetrievalIndex

# runs first in each child process: crash_hook.install(**kwargs) from this folder
PRELUDE = "import sys; sys.path.insert(0, {dir!r}); import crash_hook; crash_hook.install(**{kwargs!r})\n"

ADD = textwrap.dedent("""
    import sys
    from retrieval.index import RetrievalIndex
    from retrieval.types import Document
    idx = RetrievalIndex.open(sys.argv[1])
    idx.add_documents([Document("crash.md", "Quibbleflax is a word only the crashed save knows.")])
    print("finished")
""")
REBUILD = textwrap.dedent("""
    import sys
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex
    from retrieval.types import Document
    RetrievalIndex.build([Document("only.md", "Quibbleflax replaces everything.")], sys.argv[1],
                         IndexConfig(embedder=sys.argv[2]))
    print("finished")
""")


def _child(code: str, **hook) -> list[str]:
    return [sys.executable, "-c", PRELUDE.format(dir=str(Path(__file__).parent), kwargs=hook) + code]


def _run(code, args, **hook):
    return subprocess.run(_child(code, **hook) + args, capture_output=True, text=True, timeout=300)


def _assert_old_index_intact(path, n0):
    idx = RetrievalIndex.open(path)  # checksums verified
    assert len(idx) == n0
    assert idx.chunks_for_doc("crash.md") == [] and idx.chunks_for_doc("only.md") == []
    assert idx.search("Which island is the largest?", k=1, mode="hybrid")[0].chunk.doc_id == "veloria_geography.md"
    return idx


@pytest.mark.parametrize("point", ["after_store", "after_dense", "after_sparse", "before_manifest"])
def test_crash_during_live_add_keeps_previous_generation(index_copy, point):
    n0 = len(RetrievalIndex.open(index_copy))
    r = _run(ADD, [str(index_copy)], crash_at=point)
    assert r.returncode == CRASH_EXIT_CODE and "finished" not in r.stdout, r.stderr[-2000:]
    idx = _assert_old_index_intact(index_copy, n0)
    # the next save works and sweeps the dead generation's files
    idx.add_documents([idx.get(idx.chunk_ids()[:1])[0] and __import__("retrieval.types").types.Document(
        "after.md", "Recovered fine.")])
    assert len(RetrievalIndex.open(index_copy)) == n0 + 1
    assert _data_files(index_copy) == _manifest_files(index_copy)  # the dead write's files are gone


def test_crash_during_rebuild_into_existing_dir(index_copy, embedder_path):
    n0 = len(RetrievalIndex.open(index_copy))
    r = _run(REBUILD, [str(index_copy), embedder_path], crash_at="after_dense")
    assert r.returncode == CRASH_EXIT_CODE, r.stderr[-2000:]
    _assert_old_index_intact(index_copy, n0)


def test_sigkill_mid_save(index_copy):
    n0 = len(RetrievalIndex.open(index_copy))
    p = subprocess.Popen(_child(ADD, pause_s=3.0) + [str(index_copy)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        # wait until the new generation's store file exists, i.e. the save is under way
        while time.time() < deadline and not _data_files(index_copy) - _manifest_files(index_copy):
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(30)
    _assert_old_index_intact(index_copy, n0)


def _manifest_files(path) -> set[str]:
    import json

    return set(json.loads((path / "manifest.json").read_text())["files"])


def _data_files(path) -> set[str]:
    return {p.name for p in path.iterdir() if p.name.startswith(("store.", "dense.", "sparse.", "tomb."))}
