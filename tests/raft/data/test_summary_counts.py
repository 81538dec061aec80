"""The build summary's distractor counts add up to what the records hold: hard + random is every shown
document that is not an oracle, the stand-ins for left-out oracles included."""

import json

import pytest

from raft.data.builder import Builder
from raft.data.config import BuildConfig

from build_fakes import FakeIndex, make_chunks


def _records(out):
    return [json.loads(x) for p in sorted((out / "raft").glob("*.jsonl")) for x in p.read_text().splitlines()]


@pytest.mark.parametrize("questions_file", [False, True])
def test_distractor_counts_sum_to_the_records_documents(tmp_path, questions_file):
    index = FakeIndex(make_chunks(14, 2))
    kw = {"progress": False, "questions_per_chunk": 1,
          "mix": {"num_distractors": 3, "min_distractors": 1, "p_oracle": 0.5, "hard_ratio": 0.5}}
    if questions_file:  # two-document questions: a left-out oracle has two stand-ins
        qf = tmp_path / "q.jsonl"
        qf.write_text("".join(json.dumps({"id": f"q{d}", "question": f"Codes of place{d} and place{d + 1}?",
                                          "answers": [f"Zq{d}x0"], "gold_ids": [f"doc{d:03d}", f"doc{d + 1:03d}"]})
                              + "\n" for d in range(0, 12, 2)))
        kw |= {"questions_file": str(qf), "split": {"train": 1, "validation": 0, "test": 0}}
    s = Builder(BuildConfig.model_validate(kw), tmp_path / "o", index=index).run()
    recs = _records(tmp_path / "o")
    assert len(recs) == s["records"] and 0 < s["mixing"]["oracle_included"] < len(recs)
    shown_distractors = sum(len(r["doc_ids"]) - (len(r["oracle_ids"]) if r["oracle_included"] else 0) for r in recs)
    stand_ins = sum(len(r["oracle_ids"]) for r in recs if not r["oracle_included"])
    m = s["mixing"]
    assert m["hard_distractors"] > 0 and m["random_distractors"] > 0
    assert m["hard_distractors"] + m["random_distractors"] == shown_distractors
    assert m["oracle_stand_ins"] == stand_ins > 0
    assert (s["records"] - m["oracle_included"]) * (2 if questions_file else 1) == stand_ins


def test_questions_dropped_while_mixing_are_not_counted_as_dropped_answers(tmp_path):
    """answers kept - mixing.dropped = records: a question answered, then left without enough distractors,
    is a mixing drop (its own key and summary line), not a dropped answer."""
    import io

    from rich.console import Console

    from raft.data.summary import print_summary

    qf = tmp_path / "q.jsonl"  # q4's four gold documents leave 2 of the 6 chunks, below num_distractors=3
    rows = [{"id": f"q{d}", "question": f"What is the code of place{d}?", "answers": [f"Zq{d}x0"],
             "gold_ids": [f"doc{d:03d}"]} for d in range(4)]
    rows.append({"id": "q4", "question": "Codes of place0 to place3?", "answers": ["Zq0x0"],
                 "gold_ids": [f"doc{d:03d}" for d in range(4)]})
    qf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = BuildConfig.model_validate({"progress": False, "questions_file": str(qf), "mix": {"num_distractors": 3},
                                      "split": {"train": 1, "validation": 0, "test": 0}})
    s = Builder(cfg, tmp_path / "o", index=FakeIndex(make_chunks(6, 1))).run()
    a, m = s["answers"], s["mixing"]
    assert (a["kept"], a["dropped"], a["dropped_by_reason"]) == (5, 0, {})
    assert (m["dropped"], m["dropped_by_reason"]) == (1, {"too_few_distractors": 1})
    assert a["kept"] - m["dropped"] == s["records"] == 4
    buf = io.StringIO()
    print_summary(s, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "answers     kept 5, dropped 0\n" in text and "mix         dropped 1: too_few_distractors=1" in text
    assert "| too_few_distractors (mixing) | 1 |" in (tmp_path / "o" / "README.md").read_text()
