"""`raft eval` checks what it can before the first request (the endpoint's API root, the report
directory) and keeps every answer it got when something fails at the end."""

import errno
import json

import pytest
from fake_openai import FakeOpenAI, fact

from raft.cli import main

CORPUS = {"doc0": ("alpha", "red"), "doc1": ("bravo", "green")}


def _questions(tmp_path):
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is the key of {n}?", "answers": [v],
                                      "gold_ids": [d]}) + "\n" for i, (d, (n, v)) in enumerate(CORPUS.items())))
    return qs


def _eval(tmp_path, base_url: str, out) -> int:
    """One system that the fake serves like our gateway (it retrieves the gold fact and quotes it)."""
    return main(["eval", "--data", str(_questions(tmp_path)), "--base-url", base_url, "--model", "reader",
                 "--retrieval", "gateway", "--out", str(out)])


def test_a_base_url_without_v1_fails_at_start_naming_the_404(tmp_path, capsys):
    with FakeOpenAI(CORPUS) as server:
        root = server.base_url[: -len("/v1")]
        rc = _eval(tmp_path, root, tmp_path / "r")
        assert rc == 2
        assert server.requests == []  # no chat request was sent
    err = capsys.readouterr().err
    assert "404" in err and f"{root}/models" in err and f"try {root}/v1" in err
    assert not (tmp_path / "r").exists()


def test_an_unwritable_report_dir_fails_before_any_request(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with FakeOpenAI(CORPUS) as server:
        rc = _eval(tmp_path, server.base_url, blocker / "report")
        assert rc == 2 and server.requests == []
    err = capsys.readouterr().err
    assert "eval.out (--out)" in err and str(blocker) in err


def test_answers_are_kept_when_the_report_cannot_be_written(tmp_path, monkeypatch, capsys):
    import raft.eval.report as report

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "_plots", full_disk)  # fails after predictions.jsonl, before report.json
    out = tmp_path / "r"
    with FakeOpenAI(CORPUS) as server:
        rc = _eval(tmp_path, server.base_url, out)
        assert rc == 2 and len(server.requests) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "predictions.partial.jsonl" in err
    rows = [json.loads(x) for x in (out / "predictions.partial.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["q0", "q1"] and all(r["em"] == 1.0 for r in rows)
    assert not (out / "report.json").exists() and not list(out.glob("*.tmp"))


def test_a_finished_run_leaves_only_the_complete_report(tmp_path):
    out = tmp_path / "r"
    with FakeOpenAI(CORPUS) as server:
        assert _eval(tmp_path, server.base_url, out) == 0
    assert (out / "report.json").exists() and not (out / "predictions.partial.jsonl").exists()
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1"] and fact("alpha", "red") in rows[0]["raw"]


def test_endpoints_are_checked_before_models_are_converted(tmp_path, monkeypatch, capsys):
    """A packaged model name (smollm2-135m-instruct) is converted once, which takes a while: an endpoint
    that cannot answer is reported first."""
    monkeypatch.setattr("raft.model_source.resolve_model", lambda *a, **k: pytest.fail("converted first"))
    with FakeOpenAI(CORPUS) as server:
        root = server.base_url[: -len("/v1")]
        assert main(["eval", "--data", str(_questions(tmp_path)), "--base-url", root, "--model",
                     "smollm2-135m-instruct", "--out", str(tmp_path / "r")]) == 2
    assert "404" in capsys.readouterr().err
