import json

import pytest

from raft.data.config import BuildConfig


@pytest.mark.slow
def test_ray_data_maps_batches_through_the_same_teacher(ray_local):
    import ray

    from raft.data.distributed import answer_with_ray_data

    text = "The Coral Hall was built in 1655 from white limestone. It stands in Portivel."
    rows = [{"question": "Fill in the blank: The Coral Hall was built in _____ from white limestone.",
             "oracle_texts": [text], "hint": ""},
            {"question": "Where does it stand?", "oracle_texts": ["   "], "hint": ""},
            {"question": "Who built the Coral Hall?", "oracle_texts": [text], "hint": "the masons of Atlantis"}]
    # batch_size=1 on one actor: the actor answers several batches in turn (one event loop for its life)
    out = answer_with_ray_data(ray.data.from_items(rows), BuildConfig(), num_actors=1, batch_size=1).take_all()
    by_q = {r["question"]: r for r in out}
    assert by_q[rows[0]["question"]]["final_answer"] == "1655"
    assert by_q[rows[0]["question"]]["drop_reason"] == ""
    assert len(json.loads(by_q[rows[0]["question"]]["attempts"])) == 1
    assert by_q["Where does it stand?"]["drop_reason"] == "empty"
    # no sentence holds the hint: every attempt is made, and the answer is dropped for it
    dropped = by_q["Who built the Coral Hall?"]
    assert dropped["drop_reason"] == "quote_not_supporting_answer"
    assert len(json.loads(dropped["attempts"])) == BuildConfig().max_attempts
    requests = sum(json.loads(r["teacher_stats"])["requests"] for r in out if r["teacher_stats"])
    assert requests == sum(len(json.loads(r["attempts"])) for r in out) == 1 + 3 + 3
