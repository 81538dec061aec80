"""The RAFT-effect benchmark's statistics (benchmarks/raft_effect.py), on synthetic predictions: the
benchmark itself needs ../shared/data and an hour of CPU, but what it concludes from `raft eval`'s
predictions must be right."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("raft_effect", REPO / "benchmarks" / "raft_effect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(scores: dict[str, list[float]], n: int) -> list[dict]:
    return [{"system": arm, "sweep": "distractors", "value": n, "id": f"q{i}", "em": s, "f1": s,
             "answer_tag": arm != "base+RAG"} for arm, ss in scores.items() for i, s in enumerate(ss)]


def test_summary_bootstrap_and_targets(bench):
    n_q = 100
    scores = {"base+RAG": [0.0] * n_q, "DSF+RAG": [1.0] * 30 + [0.0] * 70, "RAFT+RAG": [1.0] * 60 + [0.0] * 40}
    preds = _rows(scores, 4) + _rows({"base+RAG": [0.0] * n_q, "DSF+RAG": [1.0] * n_q, "RAFT+RAG": [1.0] * n_q}, 0)
    preds.append({"system": "RAFT+RAG", "sweep": "distractors", "value": 4, "id": "q-error", "em": None, "f1": None,
                  "answer_tag": False})  # a failed request is left out, for every arm
    by_n = bench.summarize({}, preds, [0, 4], n_boot=500, seed=0)
    s4 = by_n["4"]
    assert s4["questions"] == n_q
    assert s4["f1"]["mean"] == {"base+RAG": 0.0, "DSF+RAG": 0.3, "RAFT+RAG": 0.6}
    lo, hi = s4["f1"]["ci95"]["RAFT+RAG"]
    assert 0.45 < lo < 0.6 < hi < 0.75  # a binomial at p=0.6, n=100: about +-0.1
    assert s4["f1"]["diff"]["RAFT+RAG - DSF+RAG"]["mean"] == pytest.approx(0.3)
    assert s4["answer_tag_rate"] == {"base+RAG": 0.0, "DSF+RAG": 1.0, "RAFT+RAG": 1.0}
    t = bench.targets(by_n, "4")
    assert t["raft_minus_dsf_f1_points"] == 30.0 and t["raft_minus_base_f1_points"] == 60.0
    assert t["raft_vs_dsf_met"] and t["raft_vs_base_met"] and t["cis_do_not_overlap"]
    # equal arms: no target met, the intervals overlap
    flat = bench.summarize({}, _rows({a: [1.0] * 50 + [0.0] * 50 for a in bench.ARMS}, 4), [4], 500, 0)
    t = bench.targets(flat, "4")
    assert not (t["raft_vs_dsf_met"] or t["raft_vs_base_met"] or t["cis_do_not_overlap"])


def test_cost_columns_latency_tokens_and_cost_per_correct(bench):
    """Latency p50/p95, tokens per answer and per correct answer, and the cost at the price `raft eval`
    reported for an arm; predictions from an eval that recorded no token counts show '–'."""
    n_q = 10
    preds = []
    for arm, right, prompt in (("base+RAG", 0, 100), ("DSF+RAG", 2, 100), ("RAFT+RAG", 5, 120)):
        for i in range(n_q):
            em = 1.0 if i < right else 0.0
            preds.append({"system": arm, "sweep": "distractors", "value": 4, "id": f"q{i}", "em": em, "f1": em,
                          "answer_tag": True, "latency_s": 0.1 * (i + 1), "prompt_tokens": prompt,
                          "completion_tokens": 20})
    report = {"runs": [{"system": "RAFT+RAG", "price": {"prompt_per_million": 1.0, "completion_per_million": 2.0}}]}
    s4 = bench.summarize(report, preds, [4], n_boot=200, seed=0)["4"]
    assert s4["latency_p50_s"]["RAFT+RAG"] == pytest.approx(0.55)
    assert s4["latency_p95_s"]["RAFT+RAG"] == pytest.approx(0.955)
    assert s4["prompt_tokens"] == {"base+RAG": 100.0, "DSF+RAG": 100.0, "RAFT+RAG": 120.0}
    assert s4["completion_tokens"]["DSF+RAG"] == 20.0
    assert s4["tokens_per_correct"] == {"base+RAG": None, "DSF+RAG": 600.0, "RAFT+RAG": 280.0}
    # 10 answers x (120 x 1 + 20 x 2) / 1e6, over 5 right ones; the other arms have no price
    assert s4["cost_per_correct"] == {"base+RAG": None, "DSF+RAG": None, "RAFT+RAG": pytest.approx(0.00032)}
    assert s4["best"]["em"]["systems"] == ["RAFT+RAG"]
    assert s4["best"]["tokens_per_answer"]["systems"] == ["base+RAG", "DSF+RAG"]
    assert s4["best"]["cost_per_correct"]["systems"] == ["RAFT+RAG"]
    text = bench.cost_table({"4": s4}, [4])
    assert ("| distractors | arm | F1 | EM | latency p50 (s) | latency p95 (s) | prompt tokens | completion tokens "
            "| tokens / correct | cost / correct |") in text
    assert "| 4 | base+RAG | 0.000 | 0.000 | 0.550 | 0.955 | 100.0 | 20.0 | – | – |" in text
    assert "| 4 | RAFT+RAG | 0.500 | 0.500 | 0.550 | 0.955 | 120.0 | 20.0 | 280.0 | 0.00032 |" in text
    assert "best (distractors=4): best EM RAFT+RAG (0.500)" in text
    assert bench.table({"4": s4}, [4]).splitlines()[2].startswith("| 4 | 0.000 [")
    # an older eval's predictions, without token counts: the figures are '–', not 0
    old = bench.summarize({}, [{k: v for k, v in p.items() if "tokens" not in k} for p in preds], [4], 200, 0)
    assert old["4"]["prompt_tokens"]["RAFT+RAG"] is None and old["4"]["latency_p50_s"]["RAFT+RAG"] == pytest.approx(0.55)
    assert "| 4 | RAFT+RAG | 0.500 | 0.500 | 0.550 | 0.955 | – | – | – | – |" in bench.cost_table(old, [4])


def test_an_interrupted_run_skips_only_steps_finished_with_the_same_arguments(bench, tmp_path, monkeypatch):
    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, **kw):
        calls.append(cmd[3:])
        return Done()

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    log, out = tmp_path / "pipeline.log", tmp_path / "data"
    timings: dict = {}
    bench.raft("build", "corpus", "--out", str(out), log=log, timings=timings, label="build", output=out)
    assert len(calls) == 1 and not (tmp_path / "steps_done.json").exists()  # no output: not finished
    out.mkdir()
    bench.raft("build", "corpus", "--out", str(out), log=log, timings=timings, label="build", output=out)
    assert len(calls) == 2 and "build" in json.loads((tmp_path / "steps_done.json").read_text())
    bench.raft("build", "corpus", "--out", str(out), log=log, timings=timings, label="build", output=out)
    assert len(calls) == 2 and bench.RESUMED == ["build"]  # same arguments, output there: skipped
    bench.raft("build", "corpus", "mix.num_distractors=2", "--out", str(out), log=log, timings=timings,
               label="build", output=out)
    assert len(calls) == 3  # other arguments: run again
