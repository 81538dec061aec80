"""Against a real `transformers serve` running the random tiny Llama: the model writes garbage, so the
point is that the whole path works (requests, token accounting, parsing) and every drop is counted."""

import pytest

from raft.data.builder import Builder, EmptyDatasetError
from raft.data.config import BuildConfig

from build_fakes import FakeIndex, make_chunks

KNOWN = {"empty", "truncated", "refused", "no_answer_tag", "empty_answer", "no_quotes", "quote_not_in_oracle",
         "quote_not_supporting_answer",
         "too_few_distractors"}


@pytest.mark.slow
def test_build_against_transformers_serve_counts_drops(tiny_engine, tiny_model_dir, tmp_path):
    tf_server, _ = tiny_engine
    cfg = BuildConfig.model_validate({
        "progress": False, "questions_per_chunk": 2, "max_chunks": 3, "max_attempts": 1,
        "mix": {"num_distractors": 2},
        "teacher": {"kind": "openai", "base_url": tf_server, "model": str(tiny_model_dir), "max_tokens": 24,
                    "concurrency": 2, "timeout_s": 60, "temperature": 0.7}})
    # a random model cannot produce a quote-verified answer: nothing is kept, and a build with no record
    # is an error that names the drops (its summary still counts them)
    with pytest.raises(EmptyDatasetError, match="0 records") as e:
        Builder(cfg, tmp_path / "o", index=FakeIndex(make_chunks(6, 1))).run()
    s = e.value.summary
    assert s["teacher_calls"]["made"] >= 3 and s["tokens"]["completion"] > 0
    a = s["answers"]
    assert set(a["dropped_by_reason"]) <= KNOWN, a
    assert a["kept"] + sum(v for k, v in a["dropped_by_reason"].items() if k != "too_few_distractors") \
        == s["questions"]["count"]
    assert a["kept"] == 0 and s["records"] == 0
    if s["questions"]["count"] == 0:
        assert s["questions"].get("chunks_without_questions", 0) == 3
    assert not (tmp_path / "o" / "manifest.json").exists()  # no empty dataset written
