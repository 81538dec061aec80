"""The RAFT-effect benchmark's statistics (benchmarks/raft_effect.py), on synthetic predictions: the
benchmark itself needs ../shared/data and an hour of CPU, but what it concludes from `raft eval`'s
predictions must be right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("raft_effect")


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
    assert bench.table({"4": s4}, [4]).splitlines()[2].startswith(f"| 4 | {s4['questions']} | 0.000 [")
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
    model = tmp_path / "model"
    model.mkdir()
    assert bench.raft("train", "data", log=log, timings=timings, label="train", output=model, after=("build",))
    assert not bench.raft("train", "data", log=log, timings=timings, label="train", output=model)
    # same arguments, output there, but the step it is built from ran in this invocation: run again
    assert bench.raft("train", "data", log=log, timings=timings, label="train", output=model, after=("build",))
    assert len(calls) == 5


def test_answers_of_a_rebuilt_arm_are_dropped_before_the_eval_resumes(bench, tmp_path):
    """`raft eval --resume` cannot see that a model served from the same path was retrained: the benchmark
    removes that arm's earlier answers, and keeps the others' and a line cut short by the stop."""
    partial = tmp_path / "predictions.partial.jsonl"
    rows = _rows({"base+RAG": [0, 1], "DSF+RAG": [1, 1], "RAFT+RAG": [0, 0]}, 4)
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"system": "RAFT+R')
    bench.drop_answers(partial, {"RAFT+RAG"})
    lines = partial.read_text().splitlines()
    kept = [json.loads(x)["system"] for x in lines[:-1]]
    assert kept == ["base+RAG", "base+RAG", "DSF+RAG", "DSF+RAG"] and lines[-1] == '{"system": "RAFT+R'
    bench.drop_answers(partial, set())
    assert len(partial.read_text().splitlines()) == 5


def test_summarize_writes_the_results_of_a_stopped_eval(tmp_path):
    """--summarize runs nothing: it reads the stopped eval's partial answers, keeps the distractor counts every
    arm finished, and lists the one it stopped in with how many questions every arm answered there."""
    import subprocess
    import sys

    out = tmp_path / "out"
    rows = _rows({"base+RAG": [0.0] * 6, "DSF+RAG": [1.0] * 6, "RAFT+RAG": [1.0] * 6}, 0)
    rows += _rows({"base+RAG": [0.0] * 4, "DSF+RAG": [0.0] * 4, "RAFT+RAG": [1.0] * 3}, 4)  # stopped here
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "predictions.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "steps_done.json").write_text(json.dumps({"train RAFT+RAG": {"args": [], "seconds": 600.0}}))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "raft_effect.py"), "--summarize", "--out",
                           str(out), "--results", "", "--bootstrap", "100"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "raft_effect.json").read_text())
    assert result["complete"] is False and result["seconds"] is None
    # 4 distractors was reached for 3 questions only: listed, and out of the table, the plot and the targets
    assert sorted(result["by_distractors"]) == ["0"] and result["incomplete_points"] == {"4": 3}
    assert result["by_distractors"]["0"]["questions"] == 6 and result["targets_at"] == "0"
    assert result["targets"]["raft_minus_dsf_f1_points"] == 0.0 and "within_60_min" not in result["targets"]
    assert result["step_seconds"] == {"train RAFT+RAG": 600.0}
    assert "| 0 | 6 | " in proc.stdout and "| 4 |" not in proc.stdout and "a stopped eval" in proc.stdout
    assert "left out: 4 distractors, 3 question(s)" in proc.stdout
    assert (out / "raft_effect.png").stat().st_size > 0


def test_every_changed_setting_names_its_own_ablation_files(bench):
    """An ablation's results must never overwrite the main run's or another ablation's."""
    import argparse

    def args(**kw):
        base = {"steps": 40, "raft_steps": None, "dsf_steps": None, "p_oracle": 0.8, "train_distractors": 4,
                "targets": "all-linear"}
        return argparse.Namespace(**{**base, **kw})

    assert bench.ablation_stem(args()) is None
    assert bench.ablation_stem(args(raft_steps=40)) is None  # the same as --steps: the main run
    assert bench.ablation_stem(args(raft_steps=100)) == "raft_effect_raft100"
    assert bench.ablation_stem(args(raft_steps=100, dsf_steps=100)) == "raft_effect_raft100_dsf100"
    assert bench.ablation_stem(args(raft_steps=100, dsf_steps=100, p_oracle=1.0)) == "raft_effect_raft100_dsf100_p100"
    assert bench.ablation_stem(args(targets="q_proj,v_proj")) == "raft_effect_qv"
    assert bench.ablation_stem(args(train_distractors=2)) == "raft_effect_d2"
    # the PNG's title says how each arm of an ablation was trained, and the main run's does not pretend to be one
    title = bench.plot_title(args(raft_steps=280, dsf_steps=100, test_set="hotpotqa_amor_dev"), 99)
    assert "RAFT trained 280 steps (P=0.8, 4 distractors, LoRA all-linear), DSF 100 steps" in title
    assert "trained" not in bench.plot_title(args(test_set="hotpotqa_amor_dev"), 99)


def _qa_set(root: Path, name: str, questions: list[str]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "corpus.jsonl").write_text(json.dumps({"id": f"{name}-p", "title": "t", "text": "x"}) + "\n")
    (root / name / "questions.jsonl").write_text("".join(
        json.dumps({"id": f"{name}-{i}", "question": q, "answers": ["a"], "gold_ids": [f"{name}-p"]}) + "\n"
        for i, q in enumerate(questions)))


def test_a_test_question_also_in_training_stops_the_run(bench, tmp_path):
    _qa_set(tmp_path, "train", ["Who wrote it?", "Where is it?"])
    _qa_set(tmp_path, "test", ["When was it?", "  who WROTE it? "])  # the same question, cased and spaced
    with pytest.raises(SystemExit, match="1 test questions also appear in training"):
        bench.prepare(tmp_path, ["train"], "test", tmp_path / "out", None, 0)
    _qa_set(tmp_path, "clean", ["When was it?"])
    files = bench.prepare(tmp_path, ["train"], "clean", tmp_path / "out", None, 0)
    assert len(bench.read_jsonl(files["train_questions"])) == 2


def test_the_price_reaches_raft_eval_as_its_override(bench):
    assert bench.price_override("0.1,0.4") == ['price={"prompt_per_million": 0.1, "completion_per_million": 0.4}']
    assert bench.price_override("") == []
    with pytest.raises(SystemExit, match="--price '0.1': give two numbers"):
        bench.price_override("0.1")
