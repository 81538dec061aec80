"""Against the real retrieval index: kill -9 mid-build, run the same command again -> the same dataset as an
uninterrupted run, with no teacher call repeated."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_fakes import FakeOpenAI, default_behave

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def real_index(corpus_dir, tmp_path_factory):
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    out = tmp_path_factory.mktemp("idx") / "index"
    RetrievalIndex.build(corpus_dir, out, IndexConfig(chunk_size=48, chunk_overlap=8))
    return out


def _cmd(index_dir, out, url, *extra):
    return [sys.executable, "-m", "raft.cli", "build", "--index", str(index_dir), "--out", str(out), "--quiet",
            "teacher.kind=openai", f"teacher.base_url={url}", "teacher.model=fake", "teacher.concurrency=2",
            "questions_per_chunk=2", "mix.num_distractors=3", *extra]


def _files(out: Path):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (p.suffix in (".jsonl", ".parquet") or p.name == "manifest.json")}


def _cache_rows(out: Path) -> int:
    db = out / ".cache" / "teacher.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(str(db), timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM teacher").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_dataset(real_index, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with FakeOpenAI(default_behave, delay=0.03) as srv:
        ref = tmp_path / "ref"
        r = subprocess.run(_cmd(real_index, ref, srv.url), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        ref_summary = json.loads((ref / "build_summary.json").read_text())
        total_calls = ref_summary["teacher_calls"]["made"]
        assert ref_summary["records"] > 5 and total_calls > 20

        out = tmp_path / "out"
        p = subprocess.Popen(_cmd(real_index, out, srv.url), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while _cache_rows(out) < total_calls // 2 and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert not (out / "manifest.json").exists(), "killed too late"
        done_before = _cache_rows(out)
        assert 0 < done_before < total_calls

        r = subprocess.run(_cmd(real_index, out, srv.url), env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    s = json.loads((out / "build_summary.json").read_text())
    assert s["teacher_calls"]["from_cache"] >= done_before
    assert s["teacher_calls"]["made"] + s["teacher_calls"]["from_cache"] == total_calls
    assert _files(out) == _files(ref)


@pytest.mark.slow
def test_real_index_unreachable_teacher_and_too_small_corpus(real_index, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.time()
    r = subprocess.run(_cmd(real_index, tmp_path / "o", f"http://127.0.0.1:{port}/v1"), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unreachable" in " ".join(r.stderr.split()) and time.time() - t0 < 60
    r = subprocess.run(_cmd(real_index, tmp_path / "o2", "http://x", "teacher.kind=extractive",
                            "mix.num_distractors=500"), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs at least 501" in " ".join(r.stderr.split())
