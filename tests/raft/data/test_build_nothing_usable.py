"""A build that produces no record is an error that names the filter that dropped everything; a build
lists the corpus files it skipped."""

import json
from pathlib import Path

import pytest

from raft.cli import main
from raft.data.builder import Builder
from raft.data.config import BuildConfig
from raft.errors import RaftError

from build_fakes import FakeIndex, FakeOpenAI, chat_response, default_behave, make_chunks


def _cfg(**kw):
    base = {"progress": False, "questions_per_chunk": 2, "mix": {"num_distractors": 2},
            "split": {"train": 1.0, "validation": 0.0, "test": 0.0}}
    return BuildConfig.model_validate(base | kw)


def _questions(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_questions_without_gold_ids_fail_before_indexing(tmp_path, monkeypatch):
    def no_index(*a, **k):
        raise AssertionError("the corpus was indexed before the questions file was checked")

    monkeypatch.setattr("raft.data.builder.open_or_build_index", no_index)
    qf = _questions(tmp_path / "q.jsonl", [{"id": "a", "question": "Why?", "answers": ["x"]},
                                          {"id": "b", "question": "How?", "answers": ["y"]}])
    with pytest.raises(RaftError, match=r"none of its 2 question\(s\) has `gold_ids`.*ids of the corpus documents"):
        Builder(_cfg(questions_file=qf), tmp_path / "o", corpus=tmp_path).run()


def test_gold_ids_not_in_the_corpus_are_named(tmp_path):
    index = FakeIndex(make_chunks(6, 1))
    index.doc_ids = lambda: sorted({c.doc_id for c in index.chunks.values()})
    qf = _questions(tmp_path / "q.jsonl", [{"id": "a", "question": "Q?", "answers": ["x"], "gold_ids": ["docs/a.md"]},
                                          {"id": "b", "question": "R?", "answers": ["y"], "gold_ids": ["b.md"]}])
    with pytest.raises(RaftError) as e:
        Builder(_cfg(questions_file=qf), tmp_path / "o", index=index).run()
    msg = str(e.value)
    assert "0 records" in msg and "gold_doc_not_in_corpus=2" in msg
    assert "'docs/a.md'" in msg and "'b.md'" in msg and "'doc000'" in msg  # missing ids, and what ids look like
    assert not (tmp_path / "o" / "raft").exists()  # no empty dataset written


def test_a_teacher_that_answers_garbage_is_named(tmp_path):
    def behave(body, n):
        if "question generator" in body["messages"][0]["content"]:
            return default_behave(body, n)
        return 200, chat_response("I think it is probably blue."), 0

    with FakeOpenAI(behave) as srv:
        cfg = _cfg(teacher={"kind": "openai", "base_url": srv.url, "model": "fake", "max_retries": 0},
                   max_attempts=2)
        with pytest.raises(RaftError) as e:
            Builder(cfg, tmp_path / "o", index=FakeIndex(make_chunks(6, 1))).run()
    msg = str(e.value)
    assert "answers were dropped by the answer checks" in msg and "no_answer_tag=" in msg
    assert "teacher cache" in msg and (tmp_path / "o" / ".cache" / "teacher.sqlite").exists()


def test_cli_exit_code_and_one_line(tmp_path, monkeypatch, capsys):
    index = FakeIndex(make_chunks(6, 1))
    monkeypatch.setattr("raft.data.builder.open_or_build_index", lambda *a, **k: index)
    qf = _questions(tmp_path / "q.jsonl", [{"id": "a", "question": "Q?", "answers": ["x"], "gold_ids": ["zzz"]}])
    rc = main(["build", str(tmp_path), "--out", str(tmp_path / "o"), "--questions", qf, "mix.num_distractors=2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "0 records" in err and "'zzz'" in err


def test_skipped_corpus_files_are_in_the_summary_and_build_summary(tmp_path, capsys):
    import shutil

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        (corpus / f"{name}.md").write_text(f"# {name.title()}\n\nThe {name} river is {i + 3} km long and "
                                           f"flows north past the town of {name.title()}ville.\n")
    (corpus / "photo.html").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(1, 256)) * 4)
    (corpus / "notes.md").write_bytes(bytes(range(128, 256)) * 20)
    (corpus / "table.xlsx").write_bytes(b"PK\x03\x04")
    out = tmp_path / "ds"
    assert main(["build", str(corpus), "--out", str(out), "mix.num_distractors=2", "questions_per_chunk=1",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped     3 corpus file(s)" in err
    assert "photo.html: binary content (PNG image)" in err and "notes.md: binary content" in err
    summary = json.loads((out / "build_summary.json").read_text())
    assert {Path(x["path"]).name for x in summary["skipped_files"]} == {"photo.html", "notes.md", "table.xlsx"}
    # a rebuild reuses the index and still knows what it skipped
    shutil.rmtree(out / "raft")
    assert main(["build", str(corpus), "--out", str(out), "mix.num_distractors=2", "questions_per_chunk=1",
                 "--quiet"]) == 0
    assert "skipped     3 corpus file(s)" in capsys.readouterr().err


def test_a_teacher_that_writes_no_question_is_named_by_kind_and_model(tmp_path):
    with FakeOpenAI(lambda body, n: (200, chat_response("Sure! Here you go."), 0)) as srv:
        cfg = _cfg(teacher={"kind": "openai", "base_url": srv.url, "model": "fake", "max_retries": 0},
                   max_attempts=1)
        with pytest.raises(RaftError, match=r"the openai teacher \(model fake\) wrote no usable question"):
            Builder(cfg, tmp_path / "o", index=FakeIndex(make_chunks(6, 1))).run()
