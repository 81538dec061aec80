import pytest

from raft.data.config import BuildConfig


@pytest.mark.slow
def test_ray_data_maps_batches_through_the_same_teacher(ray_local):
    import ray

    from raft.data.distributed import answer_with_ray_data

    text = "The Coral Hall was built in 1655 from white limestone. It stands in Portivel."
    rows = [{"question": "Fill in the blank: The Coral Hall was built in _____ from white limestone.",
             "oracle_texts": [text], "hint": ""},
            {"question": "Where does it stand?", "oracle_texts": ["   "], "hint": ""}]
    out = answer_with_ray_data(ray.data.from_items(rows), BuildConfig(), num_actors=1, batch_size=2).take_all()
    by_q = {r["question"]: r for r in out}
    assert by_q[rows[0]["question"]]["final_answer"] == "1655"
    assert by_q[rows[0]["question"]]["drop_reason"] == ""
    assert by_q["Where does it stand?"]["drop_reason"] == "empty"
