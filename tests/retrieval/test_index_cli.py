import json

import pytest

from raft.cli import main


def test_cli_build_search_json_queries_add_delete_stats(tmp_path, corpus_dir, embedder_path, capsys):
    out = tmp_path / "idx"
    corpus = tmp_path / "corpus"
    import shutil

    shutil.copytree(corpus_dir, corpus)
    (corpus / "broken.pdf").write_bytes(b"not a pdf")
    assert main(["index", "build", str(corpus), "--out", str(out), f"embedder={embedder_path}",
                 "chunk_size=64", "chunk_overlap=8"]) == 0
    err = capsys.readouterr().err
    n_docs = len(list(corpus_dir.glob("*.md")))
    assert f"{n_docs} documents" in err and "broken.pdf" in err and str(out) in err
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "Which island is the largest?"}) + "\n"
                 + json.dumps({"id": "q2", "question": "What does Veloria export?"}) + "\n")
    assert main(["index", "search", str(out), "--queries", str(q), "-k", "3", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["id"] for x in lines] == ["q1", "q2"]
    for x in lines:
        assert len(x["results"]) == 3
        assert set(x["results"][0]) == {"chunk_id", "doc_id", "score", "title", "text"}
    assert lines[0]["results"][0]["doc_id"] == "veloria_geography.md"
    assert main(["index", "search", str(out), "largest island", "-k", "2", "--mode", "bm25", "--json",
                 "--filter", "doc_id=veloria_history.md"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert res and all(r["doc_id"] == "veloria_history.md" for r in res)
    new = tmp_path / "new.md"
    new.write_text("# Zorblat\n\nThe Zorblat festival is held each spring.")
    assert main(["index", "add", str(out), str(new)]) == 0
    assert main(["index", "search", str(out), "Zorblat festival", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["doc_id"] == "new.md"
    assert main(["index", "delete", str(out), "new.md"]) == 0
    assert main(["index", "stats", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["documents"] == n_docs and st["embedder"] == "all-MiniLM-L6-v2"


def test_cli_errors_are_clean(tmp_path, built_index, capsys):
    assert main(["index", "search", str(tmp_path / "nope"), "q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", "search", str(built_index), "q", "-k", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["index", "search", str(built_index), "q", "--filter", "tenant"]) == 2
    assert "bad filter expression" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["index", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no usable documents" in capsys.readouterr().err
    assert main(["index", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", "search", str(built_index), "q", "--mode", "nope"])


def test_cli_errors_keep_long_paths_on_one_line(tmp_path, capsys, monkeypatch):
    """A path in an error message is copyable: the console does not break it across lines."""
    monkeypatch.setenv("COLUMNS", "60")  # narrower than the message, as in a small terminal or a CI log
    missing = tmp_path / ("a_directory_name_long_enough_to_pass_any_terminal_width_" * 2) / "index"
    assert main(["index", "search", str(missing), "q"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err


def test_search_batch_size_and_rerank_tuning_are_checked(tmp_path, built_index, capsys):
    """--batch-size 0 printed nothing and exited 0; rerank settings without --rerank were ignored."""
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "Which island is the largest?"}) + "\n")
    for bad in ("0", "-2"):
        for query in (["q"], ["--queries", str(q)]):
            assert main(["index", "search", str(built_index), *query, "--batch-size", bad]) == 2
            assert f"--batch-size must be a positive integer, got {bad}" in capsys.readouterr().err
    for flag, value in (("--rerank-weight", "0.5"), ("--rerank-candidates", "9")):
        assert main(["index", "search", str(built_index), "q", flag, value]) == 2
        assert f"{flag} needs --rerank MODEL" in capsys.readouterr().err
    assert main(["index", "search", str(built_index), "--queries", str(q), "--batch-size", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "q1"
