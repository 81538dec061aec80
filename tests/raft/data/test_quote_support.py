"""A kept answer's quotes must hold its final answer: the extractive teacher quotes the oracle sentence that
holds the gold answer, and a question whose answer no oracle sentence holds is dropped with its own reason
(`quote_not_supporting_answer`) instead of being kept with a verified but unrelated quote."""

import json

from raft.data.builder import Builder
from raft.data.config import BuildConfig
from raft.data.generation import answer_in_text
from raft.prompt import extract_quotes

from build_fakes import FakeIndex, make_chunks


def test_extractive_build_keeps_only_answers_its_quotes_hold(tmp_path):
    index = FakeIndex(make_chunks(10, 2))
    qf = tmp_path / "q.jsonl"
    rows = [  # the question's words point at the "Visitors ..." sentence; the answer is in the code sentence
        {"id": "held", "question": "Which visitors walk along the route of Place3 in spring?",
         "answers": ["Zq3x1"], "gold_ids": ["doc003"]},
        # the gold answer is in no chunk (as when it runs past the end of the oracle chunk)
        {"id": "past_the_chunk", "question": "Which visitors walk along the route of Place4 in spring?",
         "answers": ["the pilgrims of Atlantis"], "gold_ids": ["doc004"]}]
    qf.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = BuildConfig.model_validate({"progress": False, "questions_file": str(qf), "max_attempts": 2,
                                      "mix": {"num_distractors": 2}, "split": {"train": 1, "validation": 0, "test": 0}})
    s = Builder(cfg, tmp_path / "o", index=index).run()
    recs = [json.loads(x) for x in (tmp_path / "o" / "raft" / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["held"]
    quotes = extract_quotes(recs[0]["cot_answer"])
    assert recs[0]["final_answer"] == "Zq3x1" and quotes == ["The secret code of place3 part1 is Zq3x1."]
    assert s["answers"]["dropped_by_reason"] == {"quote_not_supporting_answer": 1}
    assert s["answers"]["failed_attempts_by_reason"] == {"quote_not_supporting_answer": 2}  # retried, then dropped
    # every kept record of a generated-question build holds its answer in a quote too
    s2 = Builder(BuildConfig.model_validate({"progress": False, "mix": {"num_distractors": 2}}), tmp_path / "g",
                 index=index).run()
    assert s2["records"] > 0
    for split in s2["splits"]:
        for line in (tmp_path / "g" / "raft" / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            assert any(answer_in_text(r["final_answer"], q) for q in extract_quotes(r["cot_answer"]))
