"""End to end on an in-memory index: schema, exports, exact oracle fraction, distractors, splits, cache."""

import json
import math
from pathlib import Path

import pytest

from raft.data.builder import Builder
from raft.data.config import BuildConfig
from raft.errors import RaftError
from raft.prompt import (completion_prompt, docs_from_record, extract_quotes, messages_from_record, quote_in,
                         render_user)

from build_fakes import FakeIndex, FakeOpenAI, chat_response, default_behave, make_chunks

RAFT_KEYS = {"id", "type", "question", "context", "oracle_context", "cot_answer", "instruction", "doc_ids",
             "oracle_ids", "oracle_included", "final_answer", "quotes_verified", "source", "teacher", "split"}


def _cfg(**kw):
    base = {"progress": False, "questions_per_chunk": 2, "mix": {"num_distractors": 3, "p_oracle": 0.8},
            "split": {"train": 0.6, "validation": 0.2, "test": 0.2}}
    base.update(kw)
    return BuildConfig.model_validate(base)


def _read(out: Path, fmt="raft"):
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted((out / fmt).glob("*.jsonl"))}


def _files(out: Path):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".jsonl", ".parquet") or p.name == "manifest.json"}


@pytest.fixture()
def index():
    return FakeIndex(make_chunks(15, 2))


def test_build_schema_exports_and_invariants(tmp_path, index):
    out = tmp_path / "ds"
    s = Builder(_cfg(), out, index=index).run()
    man = json.loads((out / "manifest.json").read_text())
    assert set(man) == {"formats", "splits", "counts", "prompt_version", "fingerprint"}
    raft = _read(out)
    recs = [r for rs in raft.values() for r in rs]
    assert len(recs) == s["records"] == sum(man["counts"].values()) == 60
    assert math.floor(0.8 * len(recs) + 0.5) == sum(r["oracle_included"] for r in recs) == s["mixing"]["oracle_included"]
    doc_split = {}
    for split, rs in raft.items():
        for r in rs:
            assert RAFT_KEYS <= set(r) and r["split"] == split
            assert r["instruction"] == render_user(r["question"], docs_from_record(r))
            assert len(r["doc_ids"]) == len(set(r["doc_ids"])) == 4  # D + 1 always
            assert (set(r["oracle_ids"]) <= set(r["doc_ids"])) == r["oracle_included"]
            assert [r["doc_ids"][i] for i in r["oracle_positions"]] == [o for o in r["doc_ids"] if o in r["oracle_ids"]]
            assert r["context"]["sentences"][0] == [index.chunks[c].text for c in r["doc_ids"]]
            for q in extract_quotes(r["cot_answer"]):
                assert quote_in(q, r["oracle_context"])
            for c in r["doc_ids"]:
                if c not in r["oracle_ids"]:
                    assert r["final_answer"].lower() not in index.chunks[c].text.lower()  # no answer leakage
            for c in r["oracle_ids"]:
                assert doc_split.setdefault(index.chunks[c].doc_id, split) == split  # doc on one side only
    assert len(set(doc_split.values())) == 3
    chat, comp, ev = _read(out, "chat"), _read(out, "completion"), _read(out, "eval")
    for split, rs in raft.items():
        assert [c["messages"] for c in chat[split]] == [messages_from_record(r) for r in rs]
        assert comp[split][0]["prompt"] == completion_prompt(rs[0]["question"], docs_from_record(rs[0]))
        assert ev[split][0]["oracle_ids"] == rs[0]["oracle_ids"] and ev[split][0]["gold_ids"]
        assert (out / "raft" / f"{split}.parquet").exists()
    from datasets import load_from_disk

    hf = load_from_disk(str(out / "hf"))
    assert set(hf) == set(raft) and hf["train"][0]["id"] == raft["train"][0]["id"]
    card = (out / "README.md").read_text()
    assert "Smoke data" in card and "num_distractors: 3" in card


def test_variable_distractor_count_spans_the_range(tmp_path, index):
    """mix.min_distractors: shown sets of every size from min+1 to D+1, and the oracle still where promised."""
    out = tmp_path / "ds"
    Builder(_cfg(mix={"num_distractors": 3, "min_distractors": 0, "p_oracle": 0.8}), out, index=index).run()
    recs = [r for rs in _read(out).values() for r in rs]
    sizes = {len(r["doc_ids"]) for r in recs}
    assert sizes == {1, 2, 3, 4}
    for r in recs:
        assert (set(r["oracle_ids"]) <= set(r["doc_ids"])) == r["oracle_included"]
    assert "0 to 3 distractor chunks" in (out / "README.md").read_text()


def test_cache_resume_and_targeted_invalidation(tmp_path, index):
    out = tmp_path / "ds"
    first = Builder(_cfg(), out, index=index).run()
    files = _files(out)
    again = Builder(_cfg(), out, index=index).run()
    assert again["teacher_calls"]["made"] == 0 and again["teacher_calls"]["from_cache"] == first["teacher_calls"]["made"]
    assert _files(out) == files
    # a mixing parameter touches no teacher call; a new seed changes the dataset but not the cache
    remix = Builder(_cfg(mix={"num_distractors": 2, "p_oracle": 0.5}), out, index=index).run()
    assert remix["teacher_calls"]["made"] == 0 and _files(out) != files
    # more questions per chunk: only the question calls and the new questions' answers are made
    more = Builder(_cfg(questions_per_chunk=3), out, index=index).run()
    assert 0 < more["teacher_calls"]["made"] < first["teacher_calls"]["made"] + 30 + 30


def test_questions_file_maps_gold_docs_to_oracle_chunks(tmp_path, index):
    qf = tmp_path / "q.jsonl"
    rows = [{"id": "a", "question": "What is the code of place3 part1?", "answers": ["Zq3x1"], "gold_ids": ["doc003"]},
            {"id": "b", "question": "Codes of place4 and place5?", "answers": ["Zq4x0"], "gold_ids": ["doc004", "doc005"]},
            {"id": "c", "question": "Missing?", "answers": ["x"], "gold_ids": ["nope"]}]
    qf.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = Builder(_cfg(questions_file=str(qf), split={"train": 1, "validation": 0, "test": 0}), tmp_path / "o",
                index=index).run()
    recs = {r["id"]: r for r in _read(tmp_path / "o")["train"]}
    assert recs["a"]["oracle_ids"] == ["c003_1"]  # the chunk of doc003 holding the answer
    assert recs["a"]["final_answer"] == "Zq3x1"
    assert {index.chunks[c].doc_id for c in recs["b"]["oracle_ids"]} == {"doc004", "doc005"}
    assert len(recs["b"]["doc_ids"]) == 3 + len(recs["b"]["oracle_ids"])
    for r in recs.values():  # no chunk of a gold document serves as a distractor
        gold = {"a": {"doc003"}, "b": {"doc004", "doc005"}}[r["id"]]
        assert all(index.chunks[c].doc_id not in gold for c in r["doc_ids"] if c not in r["oracle_ids"])
    assert s["answers"]["dropped_by_reason"] == {"gold_doc_not_in_corpus": 1}
    assert s["questions"]["count"] == 3 == s["answers"]["kept"] + s["answers"]["dropped"]  # the counts add up
    ev = _read(tmp_path / "o", "eval")["train"]
    assert {e["id"]: e["gold_ids"] for e in ev}["b"] == ["doc004", "doc005"]


def test_bad_questions_file_names_the_line(tmp_path, index):
    qf = tmp_path / "q.jsonl"
    qf.write_text('{"id": "a", "question": "ok?", "answers": ["x"], "gold_ids": ["doc001"]}\n'
                  '{"id": "b", "question": ""}\n')
    with pytest.raises(RaftError, match=r"q.jsonl:2: field 'question'"):
        Builder(_cfg(questions_file=str(qf)), tmp_path / "o", index=index).run()


@pytest.mark.parametrize("answers", [None, [], "Zq3x1", [""], [None]], ids=repr)
def test_a_question_without_gold_answers_names_the_line(tmp_path, monkeypatch, answers):
    """Without gold answers the teacher's own answer became the eval gold: an error naming file, line, field."""
    monkeypatch.setattr("raft.data.builder.open_or_build_index",
                        lambda *a, **k: pytest.fail("indexed before the questions file was checked"))
    bad = {"id": "b", "question": "What is the code of place3 part1?", "gold_ids": ["doc003"]}
    if answers is not None:
        bad["answers"] = answers
    qf = tmp_path / "q.jsonl"
    qf.write_text(json.dumps({"id": "a", "question": "ok?", "answers": ["x"], "gold_ids": ["doc001"]}) + "\n"
                  + json.dumps(bad) + "\n")
    with pytest.raises(RaftError, match=r"q.jsonl:2: field 'answers' must be a non-empty list") as e:
        Builder(_cfg(questions_file=str(qf)), tmp_path / "o", corpus=tmp_path).run()
    assert repr(answers) in str(e.value)


def test_too_few_chunks_is_a_clear_error(tmp_path):
    idx = FakeIndex(make_chunks(2, 1))
    with pytest.raises(RaftError, match=r"2 non-empty chunk\(s\) but num_distractors=4 needs at least 5"):
        Builder(_cfg(mix={"num_distractors": 4}), tmp_path / "o", index=idx).run()


def test_empty_chunks_are_skipped(tmp_path):
    from retrieval.types import Chunk

    idx = FakeIndex(make_chunks(6, 1) + [Chunk("empty", "docE", "   \n", "E")])
    s = Builder(_cfg(), tmp_path / "o", index=idx).run()
    assert s["chunks"] == {"total": 7, "empty_skipped": 1}
    assert all("empty" not in r["doc_ids"] for rs in _read(tmp_path / "o").values() for r in rs)


def test_faulty_teacher_build_continues_and_counts_every_drop(tmp_path, index):
    """429 storms, 500s, timeouts, garbage, refusals, truncation, empty output: the build finishes."""

    def behave(body, n):
        user = body["messages"][-1]["content"]
        if "question generator" in body["messages"][0]["content"]:
            return default_behave(body, n)
        if n % 7 == 0:
            return 429, {"error": "rate limited"}, 0
        if n % 11 == 0:
            return 500, "internal", 0
        if n % 13 == 0:
            return 200, "", 1.2  # slower than the timeout
        kind = sum(map(ord, user)) % 6
        if kind == 0:
            return 200, chat_response("I'm sorry, I cannot answer that."), 0
        if kind == 1:
            return 200, chat_response("##begin_quote## made up text ##end_quote## <ANSWER>: x"), 0
        if kind == 2:
            return 200, chat_response("some reasoning that was cut", finish="length"), 0
        if kind == 3:
            return 200, "<html>bad gateway</html>", 0
        return default_behave(body, n)

    with FakeOpenAI(behave) as srv:
        cfg = _cfg(teacher={"kind": "openai", "base_url": srv.url, "model": "fake", "timeout_s": 1.0,
                            "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "concurrency": 8},
                   max_attempts=1, questions_per_chunk=2)
        s = Builder(cfg, tmp_path / "o", index=index).run()
    a = s["answers"]
    assert a["kept"] > 0 and a["dropped"] > 0
    assert a["kept"] + sum(v for k, v in a["dropped_by_reason"].items() if k != "too_few_distractors") == s["questions"]["count"]
    assert {"refused", "quote_not_in_oracle", "truncated", "teacher_malformed_response"} <= set(a["dropped_by_reason"])
    assert s["teacher_calls"]["retries"] > 0 and s["tokens"]["prompt"] > 0
    assert 0 < a["quote_verification_rate"] < 1
    recs = [r for rs in _read(tmp_path / "o").values() for r in rs]
    assert len(recs) == s["records"] and all(r["quotes_verified"] for r in recs)
