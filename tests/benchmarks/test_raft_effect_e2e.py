"""benchmarks/raft_effect.py end to end, reduced: three tiny QA sets written here (no ../shared/data), two
optimizer steps per trained arm on SmolLM2, three test questions, distractor counts 0 and 2. It runs the
benchmark's own pipeline (raft build x3 -> raft train x2 on Ray -> raft export --merge x2 -> one batched
engine per arm -> raft eval) and checks that every arm answered and was scored at every distractor count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~5 min on 2 idle cores

# (country, capital, river) triples: each question's answer sits in one passage, its second gold passage
# names the country, so that a question has two gold passages as in HotpotQA.
FACTS = {
    "train_a": [("Veloria", "Portivel", "Amsa"), ("Karthen", "Duvrak", "Sellan"), ("Moravia Nova", "Istrel", "Ber"),
                ("Tallind", "Oskaro", "Venn"), ("Quessa", "Lumeport", "Raddle")],
    "train_b": [("Brevonia", "Haldmere", "Oss"), ("Sundal", "Crestby", "Ilm"), ("Ostrava Minor", "Pelgrin", "Tue"),
                ("Ardeny", "Volkstadt", "Mirr"), ("Casimar", "Tholen", "Yarrow")],
    "test_c": [("Drosk", "Emberfall", "Kell"), ("Lirien", "Saltmarch", "Obb"), ("Pentavia", "Norwick", "Fane"),
               ("Galdoria", "Ruskin Bay", "Umber")],
}


# distractor material with its own vocabulary: the passages above are templated, so the builder rightly
# rejects them as near-duplicates of each other's oracles
FILLER = ["Glassblowers shape molten sand with long iron pipes, then cool each vase slowly in an annealing oven.",
          "The migratory swift sleeps on the wing and may stay airborne for ten months without landing.",
          "Early printing presses used movable type cast from an alloy of lead, tin and antimony.",
          "Sourdough rises because wild yeasts and lactic bacteria ferment the flour over many hours.",
          "A violin's spruce top and maple back are joined with hide glue so repairers can open it later.",
          "Tidal power stations turn the daily rise and fall of the sea into electricity through turbines."]


def _write_set(root: Path, name: str, facts: list[tuple[str, str, str]]) -> None:
    corpus = [{"id": f"{name}:filler{i}", "title": text.split()[1], "text": text} for i, text in enumerate(FILLER)]
    questions = []
    for i, (country, capital, river) in enumerate(facts):
        a, b = f"{name}:{2 * i}", f"{name}:{2 * i + 1}"
        corpus.append({"id": a, "title": capital, "text": f"{capital} is the capital city of {country}. "
                       f"It lies on the river {river} and has a cathedral, a harbour and a university."})
        corpus.append({"id": b, "title": country, "text": f"{country} is a small republic. Its parliament meets "
                       f"every spring, and the river {river} crosses the whole country from north to south."})
        questions.append({"id": f"{name}-q{i}", "question": f"Which city on the river {river} is the capital "
                          f"of {country}?", "answers": [capital], "gold_ids": [a, b]})
    d = root / name
    d.mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (d / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))


def test_reduced_benchmark_scores_every_arm(tmp_path):
    data = tmp_path / "data"
    for name, facts in FACTS.items():
        _write_set(data, name, facts)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "raft_effect.py"), "--data", str(data),
           "--train-sets", "train_a,train_b", "--test-set", "test_c", "--out", str(out), "--results", "",
           "--steps", "2", "--batch-tokens", "512", "--max-seq-len", "512", "--rank", "4",
           "--eval-n", "3", "--sweep", "0,2", "--max-tokens", "24", "--bootstrap", "50"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads((out / "raft_effect.json").read_text())
    assert result["train_questions"] == 10 and result["test_questions"] == 3
    assert (out / "raft_effect.png").stat().st_size > 0
    predictions = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    for n in (0, 2):
        stats = result["by_distractors"][str(n)]
        assert stats["questions"] == 3  # every arm scored all three questions at this distractor count
        for arm in ("base+RAG", "DSF+RAG", "RAFT+RAG"):
            rows = [p for p in predictions if p["system"] == arm and p["value"] == n]
            assert len(rows) == 3 and all(p["em"] is not None and p["f1"] is not None for p in rows), rows
            assert all(p["raw"].strip() and p["error"] is None for p in rows), rows  # the engine answered
            # shown: the 2 gold passages plus n distractors, the same documents for every arm
            assert all(len(p["retrieved"]) == 2 + n for p in rows), rows
            assert 0.0 <= stats["f1"]["mean"][arm] <= 1.0
        shown = {arm: sorted(p["id"] + ":" + ",".join(p["retrieved"]) for p in predictions
                             if p["system"] == arm and p["value"] == n) for arm in ("DSF+RAG", "RAFT+RAG")}
        assert shown["DSF+RAG"] == shown["RAFT+RAG"]
    assert set(result["targets"]) >= {"raft_minus_dsf_f1_points", "raft_minus_base_f1_points", "within_60_min"}

    # the ablation on the same OUT: only the RAFT arm is trained again and asked, at the targets' point (2 here)
    proc = subprocess.run(cmd + ["--raft-steps", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "raft_effect.json").read_text()) == result  # the main result is left as it was
    ablation = json.loads((out / "raft_effect_raft3.json").read_text())
    assert list(ablation["by_distractors"]) == ["2"] and ablation["by_distractors"]["2"]["questions"] == 3
    assert {"train DSF+RAG", "export DSF+RAG", "build test set"} <= set(ablation["resumed_steps"])
    assert not {"train RAFT+RAG", "export RAFT+RAG"} & set(ablation["resumed_steps"])
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["reused_answers"] == 6  # base and DSF at 2 distractors; RAFT's 3 were asked again
    assert json.loads((out / "adapter-RAFT" / "raft_meta.json").read_text())["checkpoint"].endswith("step0000003")
