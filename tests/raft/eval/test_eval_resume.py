"""`raft eval --resume` reuses the answers an interrupted run left in OUT/predictions.partial.jsonl, and asks
again exactly the questions it has no usable answer for."""

import errno
import json

import pytest
from fake_openai import FakeOpenAI

from raft.cli import main

CORPUS = {"doc0": ("alpha", "red"), "doc1": ("bravo", "green"), "doc2": ("charlie", "blue")}


def _questions(tmp_path):
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is the key of {n}?", "answers": [v],
                                      "gold_ids": [d]}) + "\n" for i, (d, (n, v)) in enumerate(CORPUS.items())))
    return qs


def _eval(tmp_path, server, out, *extra) -> int:
    return main(["eval", "--data", str(_questions(tmp_path)), "--base-url", server.base_url, "--model", "reader",
                 "--retrieval", "gateway", "--out", str(out), *extra])


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """An eval whose report could not be written: all three answers are left in the partial file."""
    import raft.eval.report as report

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "r"
    with monkeypatch.context() as m:
        m.setattr(report, "_plots", full_disk)
        with FakeOpenAI(CORPUS) as server:
            assert _eval(tmp_path, server, out) == 2 and len(server.requests) == 3
    return out


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_resume_reuses_every_answer_on_another_port(tmp_path, interrupted, capsys):
    capsys.readouterr()
    with FakeOpenAI(CORPUS) as server:  # the engine came back on another port: same answers, no request
        assert _eval(tmp_path, server, interrupted, "--resume") == 0
        assert server.requests == []
    err = capsys.readouterr().err
    assert "3 answer(s) reused" in err and "(3 reused)" in err
    report = json.loads((interrupted / "report.json").read_text())
    assert report["runs"][0]["em"] == 1.0 and report["reused_answers"] == 3
    assert sorted(r["id"] for r in _rows(interrupted / "predictions.jsonl")) == ["q0", "q1", "q2"]
    assert not (interrupted / "predictions.partial.jsonl").exists()


def test_resume_asks_only_what_is_missing_failed_or_cut_short(tmp_path, interrupted, capsys):
    partial = interrupted / "predictions.partial.jsonl"
    rows = _rows(partial)
    by_id = {r["id"]: r for r in rows}
    by_id["q1"]["error"] = "HTTP 500"  # a failed request is asked again
    # q2's line was cut short by the interruption; q0 stays as it was
    partial.write_text(json.dumps(by_id["q0"]) + "\n" + json.dumps(by_id["q1"]) + "\n" + json.dumps(by_id["q2"])[:40])
    capsys.readouterr()
    with FakeOpenAI(CORPUS) as server:
        assert _eval(tmp_path, server, interrupted, "--resume") == 0
        asked = sorted(json.dumps(r) for r in server.requests)
        assert len(server.requests) == 2 and "bravo" in asked[0] + asked[1] and "charlie" in asked[0] + asked[1]
    assert "1 answer(s) reused" in capsys.readouterr().err
    assert sorted(r["id"] for r in _rows(interrupted / "predictions.jsonl")) == ["q0", "q1", "q2"]


def test_other_generation_settings_are_not_reused(tmp_path, interrupted, capsys):
    capsys.readouterr()
    with FakeOpenAI(CORPUS) as server:
        assert _eval(tmp_path, server, interrupted, "--resume", "max_tokens=17") == 0
        assert len(server.requests) == 3
    assert "3 asked again" in capsys.readouterr().err


def test_without_resume_the_partial_answers_are_replaced_with_a_warning(tmp_path, interrupted, capsys):
    capsys.readouterr()
    with FakeOpenAI(CORPUS) as server:
        assert _eval(tmp_path, server, interrupted) == 0
        assert len(server.requests) == 3
    assert "pass --resume" in capsys.readouterr().err


def test_resume_after_a_finished_run_asks_only_a_new_system(tmp_path, interrupted, capsys):
    """A finished run's predictions.jsonl seeds a resumed one: a system added afterwards is the only one asked."""
    with FakeOpenAI(CORPUS) as server:
        assert _eval(tmp_path, server, interrupted, "--resume") == 0  # finishes: predictions.jsonl, no partial
    assert not (interrupted / "predictions.partial.jsonl").exists()
    capsys.readouterr()
    systems = [{"name": "reader", "model": "reader", "retrieval": "gateway"},
               {"name": "other", "model": "other", "retrieval": "gateway"}]
    with FakeOpenAI(CORPUS) as server:
        cfg = [f"systems={json.dumps([dict(s, base_url=server.base_url) for s in systems])}"]
        assert main(["eval", "--data", str(_questions(tmp_path)), "--out", str(interrupted), "--resume", *cfg]) == 0
        assert [r["model"] for r in server.requests] == ["other"] * 3
    assert "3 answer(s) reused" in capsys.readouterr().err
    rows = _rows(interrupted / "predictions.jsonl")
    assert sorted((r["system"], r["id"]) for r in rows) == [(s, f"q{i}") for s in ("other", "reader") for i in range(3)]
