"""`raft build --ray` (build.ray=true): the answers are made by teacher actors on Ray Data and replayed through
the build's own cache and checks, so the records are those of the in-process build for the same seed and
teacher; a rerun takes every answer from the cache; the CLI joins the cluster named by RAY_ADDRESS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raft.data.builder import Builder
from raft.data.config import BuildConfig

from build_fakes import FakeIndex, make_chunks

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def _cfg(tmp_path, **kw):
    qf = tmp_path / "q.jsonl"  # given questions: two held by their oracle, one answered by nothing in it
    qf.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "question": "What is the code of place3 part1?", "answers": ["Zq3x1"], "gold_ids": ["doc003"]},
        {"id": "b", "question": "When do visitors walk in Place5?", "answers": ["1950"], "gold_ids": ["doc005"]},
        {"id": "c", "question": "Who founded Place6?", "answers": ["the founders of Atlantis"],
         "gold_ids": ["doc006"]}]))
    base = {"progress": False, "mix": {"num_distractors": 3, "p_oracle": 0.5}, "ray_actors": 1, "ray_batch_size": 2}
    return BuildConfig.model_validate(base | kw), BuildConfig.model_validate(base | kw | {"questions_file": str(qf)})


def _outputs(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("*/*.jsonl")) + [out / "manifest.json"]}


def _comparable(s: dict) -> dict:
    return {k: s[k] for k in ("answers", "questions", "mixing", "records", "splits")} | {
        "calls": {k: s["teacher_calls"][k] for k in ("made", "from_cache", "http_requests", "failed_requests")}}


def test_ray_build_writes_the_in_process_records(ray_local, tmp_path):
    index = FakeIndex(make_chunks(12, 2))
    for i, cfg in enumerate(_cfg(tmp_path, questions_per_chunk=1)):
        local = Builder(cfg, tmp_path / f"local{i}", index=index).run()
        on_ray = Builder(cfg.model_copy(update={"ray": True}), tmp_path / f"ray{i}", index=index).run()
        assert local["records"] > 0 and "ray" not in local
        assert on_ray["ray"]["questions_sent"] == local["questions"]["count"] and on_ray["ray"]["address"]
        assert _outputs(tmp_path / f"ray{i}") == _outputs(tmp_path / f"local{i}")
        assert _comparable(on_ray) == _comparable(local)
        # a rerun needs no actor: every answer, failed attempts included, comes from the cache
        again = Builder(cfg.model_copy(update={"ray": True}), tmp_path / f"ray{i}", index=index).run()
        assert again["ray"]["questions_sent"] == 0 and again["teacher_calls"]["made"] == 0
        assert _outputs(tmp_path / f"ray{i}") == _outputs(tmp_path / f"local{i}")
    # the questions-file build retried and dropped the answer its quotes could not hold, on Ray as in process
    assert on_ray["answers"]["dropped_by_reason"] == {"quote_not_supporting_answer": 1}
    assert on_ray["answers"]["failed_attempts_by_reason"] == {"quote_not_supporting_answer": 3}


# the subprocess driver: `raft build --ray` as a user runs it, on this test's small in-memory index
_DRIVER = """
import sys
import raft.data.builder as builder
from build_fakes import FakeIndex, make_chunks
builder.open_or_build_index = lambda *a, **k: FakeIndex(make_chunks(12, 2))
from raft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_ray_flag_joins_the_cluster_of_ray_address(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    # build_fakes.py sits here and imports quiet_http.py from tests/: the subprocess needs both folders
    path = [str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": os.pathsep.join(path)}
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, "-c", _DRIVER, "build", str(tmp_path), "--out", str(out), "--ray", "--quiet",
                        "ray_actors=1", "questions_per_chunk=1", "mix.num_distractors=3"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    s = json.loads((out / "build_summary.json").read_text())
    assert s["ray"]["address"] == address and s["ray"]["questions_sent"] == s["questions"]["count"] > 0
    same = BuildConfig.model_validate({"progress": False, "questions_per_chunk": 1, "mix": {"num_distractors": 3}})
    local = Builder(same, tmp_path / "local", index=FakeIndex(make_chunks(12, 2))).run()
    assert _outputs(out) == _outputs(tmp_path / "local") and s["records"] == local["records"]


def test_help_documents_the_flag(capsys):
    from raft.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ray" in text and "RAY_ADDRESS" in text and "--out data/ray --ray" in text
