"""`teacher.strategy=stepwise` through the real builder, against a fake endpoint that answers like a small model:
some replies are questions, some copy the passage; some answers restate the question, some are invented."""

import json
import re

import pytest

from raft.config import ConfigError, load_config
from raft.data.builder import Builder, EmptyDatasetError
from raft.data.config import BuildConfig
from raft.data.teacher_stepwise import ANSWER_SYSTEM, QUESTION_SYSTEM, StepwiseTeacher
from raft.data.teachers import OpenAITeacher, make_teacher
from raft.prompt import extract_quotes

from build_fakes import FakeIndex, FakeOpenAI, chat_response, make_chunks

CODE = re.compile(r"Zq(\d+)x(\d+)")


def small_model(body, n):
    """make_chunks' sentences: the code sentence gets a real question, the others a copy of the passage; a
    question about a code gets a chatty reply holding it ("the secret code of ... is Zq3x1"), any other an
    invented one."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if system == QUESTION_SYSTEM:
        passage = user.removeprefix("Passage: ")
        m = re.search(r"secret code of (place\d+ part\d+)", passage)
        return 200, chat_response(f"What is the secret code of {m.group(1)}?\nIt is a code." if m else passage), 0
    assert system == ANSWER_SYSTEM and "Question:" in user
    shown = user.split("\nQuestion:")[0]
    code = CODE.search(shown)
    q = user.rsplit("Question: ", 1)[1]
    if code and "secret code" in q:
        return 200, chat_response(f"the {q.removeprefix('What is ').rstrip('?')} is {code.group(0)}"), 0
    return 200, chat_response("a pink elephant"), 0


class Recorded:
    """A behave function that keeps every request body."""

    def __init__(self, behave):
        self.behave, self.bodies = behave, []

    def __call__(self, body, n):
        self.bodies.append(body)
        return self.behave(body, n)


def _cfg(url, **kw):
    base = {"progress": False, "questions_per_chunk": 2, "max_attempts": 2, "mix": {"num_distractors": 2},
            "teacher": {"kind": "openai", "strategy": "stepwise", "base_url": url, "model": "small",
                        "max_retries": 0, "concurrency": 4}}
    base.update(kw)
    return BuildConfig.model_validate(base)


def test_stepwise_build_keeps_only_real_questions_and_assembles_verified_answers(tmp_path):
    with FakeOpenAI(small_model) as srv:
        # 3 questions asked per chunk: one per sentence, so each chunk's code sentence is asked about
        b = Builder(_cfg(srv.url, questions_per_chunk=3), tmp_path / "o", index=FakeIndex(make_chunks(6, 1)))
        s = b.run()
    f = b.teacher.stats.filtered
    assert f["question_not_a_question"] > 0           # the copied passages never became questions
    assert s["questions"]["count"] == 6 and s["answers"]["kept"] == 6  # one real question per chunk
    assert s["answers"]["quote_verification_rate"] == 1.0
    assert s["teacher_calls"]["filtered"] == dict(f)
    rows = [json.loads(x) for p in (tmp_path / "o" / "raft").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        d, j = re.search(r"place(\d+) part(\d+)", r["question"]).groups()
        assert r["final_answer"] == f"Zq{d}x{j}"     # cut down from the chatty reply, as the passage writes it
        (quote,) = extract_quotes(r["cot_answer"])
        assert quote.startswith("The secret code of") and quote in r["oracle_context"]
        assert r["cot_answer"].endswith(f"<ANSWER>: Zq{d}x{j}")


def test_an_answer_not_in_the_passage_is_retried_then_dropped_with_its_reason(tmp_path):
    def never_right(body, n):
        if body["messages"][0]["content"] == QUESTION_SYSTEM:
            return 200, chat_response("Where do visitors of the place walk in spring?"), 0
        return 200, chat_response("a pink elephant"), 0

    rec = Recorded(never_right)
    with FakeOpenAI(rec) as srv:
        b = Builder(_cfg(srv.url, questions_per_chunk=1), tmp_path / "o", index=FakeIndex(make_chunks(4, 1)))
        with pytest.raises(EmptyDatasetError, match="0 records"):
            b.run()
    answer_calls = sum(1 for body in rec.bodies if body["messages"][0]["content"] == ANSWER_SYSTEM)
    assert b.drops == {"teacher_answer_not_in_passage": 4}
    assert b.attempt_fails["teacher_answer_not_in_passage"] == 8 and answer_calls == 8  # 2 attempts each


def test_a_gold_answer_needs_no_model_call(tmp_path):
    chunks = make_chunks(4, 1)
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{d}", "question": f"What is the code of place{d}?",
                                         "answers": [f"Zq{d}x0"], "gold_ids": [f"doc{d:03d}"]}) + "\n"
                             for d in range(4)))
    rec = Recorded(small_model)
    with FakeOpenAI(rec) as srv:
        s = Builder(_cfg(srv.url, questions_file=str(qfile)), tmp_path / "o", index=FakeIndex(chunks)).run()
    posts = len(rec.bodies)
    assert s["answers"]["kept"] == 4 and posts == 0
    row = json.loads((tmp_path / "o" / "raft").glob("*.jsonl").__next__().read_text().splitlines()[0])
    assert extract_quotes(row["cot_answer"])[0].startswith("The secret code")


def test_strategy_is_part_of_the_cache_key_and_needs_a_model():
    cot = make_teacher(_cfg("http://x/v1").teacher.model_copy(update={"strategy": "cot"}))
    step = make_teacher(_cfg("http://x/v1").teacher)
    assert isinstance(cot, OpenAITeacher) and isinstance(step, StepwiseTeacher)
    assert cot.signature() != step.signature() and step.kind == "openai"
    with pytest.raises(ConfigError, match="kind=extractive has no model"):
        load_config(BuildConfig, None, ["teacher.strategy=stepwise"])


QUESTION_LABELS = {"question_not_a_question", "question_bad_length", "question_copies_passage",
                   "question_vague_pronoun", "question_off_passage", "question_no_usable_sentence"}


@pytest.mark.slow
def test_stepwise_against_a_real_transformers_serve(tiny_engine, tmp_path):
    """The few-shot conversations (system, example turns, the passage) go through a real `transformers serve`;
    the random tiny model writes garbage, which the question filter rejects, each rejection counted."""
    url, model = tiny_engine
    cfg = _cfg(url, questions_per_chunk=2, max_chunks=3, max_attempts=1,
               teacher={"kind": "openai", "strategy": "stepwise", "base_url": url, "model": model,
                        "max_tokens": 24, "concurrency": 2, "timeout_s": 120, "max_retries": 0})
    try:
        s = Builder(cfg, tmp_path / "o", index=FakeIndex(make_chunks(6, 1))).run()
    except EmptyDatasetError as e:
        s = e.summary
    calls = s["teacher_calls"]
    assert calls["failed_requests"] == {} and calls["http_requests"] >= 3 and s["tokens"]["completion"] > 0
    rejected = {k: v for k, v in calls["filtered"].items() if k.startswith("question_")}
    assert set(rejected) <= QUESTION_LABELS
    # every question reply was either kept or rejected with a reason
    question_calls = calls["http_requests"] - sum(s["answers"]["failed_attempts_by_reason"].values()) \
        - s["answers"]["kept"]
    assert sum(rejected.values()) + s["questions"]["count"] == question_calls
