"""raft.jsonl.iter_jsonl: the one JSONL reader behind queries, questions, eval and training files."""

import pytest

from raft.errors import RaftError
from raft.jsonl import iter_jsonl


def test_yields_line_numbers_and_skips_blank_lines(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"id": 1}\n\n   \n{"id": 2, "t": "x\u2028y"}\r\n', encoding="utf-8")
    assert list(iter_jsonl(f)) == [(1, {"id": 1}), (4, {"id": 2, "t": "x\u2028y"})]


def test_bad_line_is_named_with_file_and_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"id": 1}\n\n{not json\n{"id": 3}\n')
    it = iter_jsonl(f)
    assert next(it) == (1, {"id": 1})
    with pytest.raises(RaftError, match=r"b\.jsonl:3: not valid JSON \(.* at column 2\).*fix or remove"):
        next(it)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("null", "NoneType")])
def test_non_object_line_is_an_error(tmp_path, line, kind):
    f = tmp_path / "c.jsonl"
    f.write_text(f'{{"id": 1}}\n{line}\n')
    with pytest.raises(RaftError, match=rf"c\.jsonl:2: expected a JSON object, got {kind}"):
        list(iter_jsonl(f))


def test_error_class_and_non_utf8_line(tmp_path):
    class MyError(Exception):
        pass

    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"id": 1}\n{"t": "\xff"}\n')
    with pytest.raises(MyError, match=r"d\.jsonl:2: not UTF-8"):
        list(iter_jsonl(f, MyError))


def test_index_search_queries_keep_retrieval_error(tmp_path):
    from raft.commands.index import _read_queries
    from retrieval.errors import RetrievalError

    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "question": "x?"}\n{"query": "y?"}\n[1]\n')
    with pytest.raises(RetrievalError, match=r"q\.jsonl:3: expected a JSON object"):
        _read_queries(str(f))
    f.write_text('{"id": "a", "question": "x?"}\n\n{"query": "y?"}\n')
    assert _read_queries(str(f)) == [("a", "x?"), ("3", "y?")]
