"""`raft eval` against a real engine: `transformers serve` running the tiny random Llama on CPU.

The tiny model knows nothing, so the scores are near zero; what is checked is the plumbing: real HTTP,
a real chat template, every request answered, every metric and report file produced.
"""

import json

import pytest
from test_eval_runner import raft_record

from raft.cli import main

pytestmark = pytest.mark.slow


def test_eval_against_transformers_serve(tiny_engine, tmp_path):
    base_url, model = tiny_engine
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(raft_record(i)) + "\n" for i in range(3)))
    out = tmp_path / "report"
    systems = [{"name": "base", "base_url": base_url, "model": model, "retrieval": "off"},
               {"name": "base+docs", "base_url": base_url, "model": model, "retrieval": "record"}]
    rc = main(["eval", "--data", str(data), "--out", str(out), f"systems={json.dumps(systems)}",
               "sweep.distractors=[0,2]", "max_tokens=12", "concurrency=2", "timeout=60"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["base", "base+docs", "base+docs distractors=0",
                                                    "base+docs distractors=2"]
    for r in report["runs"]:
        assert r["n"] == 3 and r["errors"] == 0, r
        assert 0.0 <= r["em"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(p["raw"] for p in preds)  # the engine really generated text
    assert (out / "report.md").read_text().startswith("# RAFT evaluation report")
    assert (out / "sweep_distractors.png").stat().st_size > 1000
