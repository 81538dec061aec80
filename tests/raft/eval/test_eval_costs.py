"""The RAG-or-fine-tune figures of `raft eval`: latency p50/p95, prompt and completion tokens per answer
(from each reply's `usage`, never estimated), cost per correct answer at a configured price (with a
per-system override), the best system per metric, and the price fields' validation."""

import json

import pytest
from fake_openai import FakeOpenAI
from test_eval_runner import CORPUS, NAMES, VALUES

from raft.cli import main
from raft.commands.eval import summary_table
from raft.config import ConfigError, load_config
from raft.eval.config import EvalConfig, PriceConfig
from raft.eval.metrics import percentile
from raft.eval.report import best_lines, best_per_metric, markdown
from raft.eval.runner import cost_metrics


def test_percentiles_interpolate_between_ranks():
    xs = [float(x) for x in range(1, 11)]  # 1..10
    assert percentile(xs, 50) == pytest.approx(5.5) and percentile(xs, 95) == pytest.approx(9.55)
    assert percentile(reversed(xs), 0) == 1.0 and percentile(xs, 100) == 10.0
    assert percentile([0.3, None], 95) == 0.3 and percentile([], 50) is None and percentile([None], 50) is None


def _row(latency, prompt, completion, em):
    return {"latency_s": latency, "prompt_tokens": prompt, "completion_tokens": completion, "em": em}


def test_cost_metrics_from_usage_and_price():
    rows = [_row(0.1, 100, 10, 1.0), _row(0.2, 300, 30, 0.0), _row(0.3, 200, 20, 1.0), _row(0.4, 400, 40, 0.0)]
    price = PriceConfig(prompt_per_million=2.0, completion_per_million=10.0)
    m = cost_metrics(rows, price)
    assert m["latency_p50_s"] == pytest.approx(0.25) and m["latency_p95_s"] == pytest.approx(0.385)
    assert (m["prompt_tokens"], m["completion_tokens"], m["tokens_per_answer"]) == (250.0, 25.0, 275.0)
    assert m["correct"] == 2 and m["usage_missing"] == 0 and m["tokens_per_correct"] == 1100 / 2
    # all four answers are paid for, two are right: (1000 x 2 + 100 x 10) / 1e6 / 2
    assert m["cost"] == pytest.approx(0.003) and m["cost_per_correct"] == pytest.approx(0.0015)
    assert m["price"] == {"prompt_per_million": 2.0, "completion_per_million": 10.0}
    # no price: tokens only
    m = cost_metrics(rows)
    assert m["cost"] is None and m["cost_per_correct"] is None and m["price"] is None
    assert m["tokens_per_correct"] == 550
    # no correct answer: nothing per correct answer, not infinity or 0
    m = cost_metrics([_row(0.1, 100, 10, 0.0)], price)
    assert m["cost"] == pytest.approx(0.0003) and m["cost_per_correct"] is None and m["tokens_per_correct"] is None


def test_missing_usage_is_reported_not_invented():
    price = PriceConfig(prompt_per_million=1.0, completion_per_million=1.0)
    m = cost_metrics([_row(0.1, None, None, 1.0), _row(0.2, None, None, 1.0)], price)
    assert m["prompt_tokens"] is None and m["completion_tokens"] is None and m["tokens_per_answer"] is None
    assert m["usage_missing"] == 2 and m["cost"] is None and m["cost_per_correct"] is None
    assert m["latency_p50_s"] == pytest.approx(0.15)  # latency is measured here, whatever the endpoint says
    # some answers without counts: means over those reported, but no total (it would be too low)
    m = cost_metrics([_row(0.1, 100, 10, 1.0), _row(0.2, None, None, 1.0)], price)
    assert m["prompt_tokens"] == 100 and m["usage_missing"] == 1
    assert m["tokens_per_correct"] is None and m["cost_per_correct"] is None


def _run(system, sweep="main", value=None, **metrics):
    return {"system": system, "label": system if sweep == "main" else f"{system} {sweep}={value}",
            "sweep": sweep, "value": value, "errors": 0, "n": 10, **metrics}


def test_best_system_per_metric():
    runs = [_run("base", em=0.1, f1=0.2, latency_p50_s=0.5, tokens_per_answer=50.0, cost_per_correct=None),
            _run("base+RAG", em=0.4, f1=0.5, latency_p50_s=0.9, tokens_per_answer=900.0, cost_per_correct=0.002),
            _run("RAFT+RAG", em=0.4, f1=0.6, latency_p50_s=0.7, tokens_per_answer=800.0, cost_per_correct=0.001),
            _run("RAFT+RAG", "distractors", 4, em=0.3, f1=0.4),
            _run("base+RAG", "distractors", 4, em=0.1, f1=0.4),
            _run("RAFT+RAG", "top_k", 1, em=0.2, f1=0.3)]  # one system at top_k=1: nothing to compare
    best = best_per_metric(runs)
    assert list(best) == ["main", "distractors=4"]
    main_best = best["main"]
    assert main_best["em"] == {"systems": ["base+RAG", "RAFT+RAG"], "value": 0.4}  # a tie names both
    assert main_best["f1"]["systems"] == ["RAFT+RAG"]
    assert main_best["latency_p50_s"] == {"systems": ["base"], "value": 0.5}
    assert main_best["tokens_per_answer"]["systems"] == ["base"]
    assert main_best["cost_per_correct"] == {"systems": ["RAFT+RAG"], "value": 0.001}  # None is not cheapest
    assert best["distractors=4"]["em"]["systems"] == ["RAFT+RAG"] and "latency_p50_s" not in best["distractors=4"]
    lines = best_lines(best)
    assert lines[0].startswith("best (main runs): best EM base+RAG, RAFT+RAG (0.400); best F1 RAFT+RAG (0.600); "
                               "lowest latency p50 base (0.500 s)")
    assert lines[1].startswith("best (distractors=4): best EM RAFT+RAG (0.300)")
    md = markdown({"runs": runs, "best": best, "n_items": 10, "answer_style": "text", "elapsed_s": 1.0}, [1], "q")
    assert "## Summary: best system per metric" in md
    assert "| main | base+RAG, RAFT+RAG (0.400) | RAFT+RAG (0.600) | base (0.500 s) | base (50.0 tokens) | " \
           "RAFT+RAG (0.001) |" in md


def test_price_fields_are_validated():
    cfg = load_config(EvalConfig, None, ["price.prompt_per_million=0.15", "price.completion_per_million=0.6"])
    assert cfg.price.cost(1_000_000, 100_000) == pytest.approx(0.21)
    assert not EvalConfig().price.is_set  # no price by default
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, ["price.prompt_per_million=-1", "price.completion_per_million=0.6"])
    assert "price.prompt_per_million" in str(e.value) and "cannot be negative" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, ['systems=[{"name": "api", "model": "m", "price": '
                                       '{"prompt_per_million": 1, "completion_per_million": -0.5}}]'])
    assert "systems.0.price.completion_per_million" in str(e.value) and "cannot be negative" in str(e.value)
    with pytest.raises(ConfigError, match="prompt_per_million is set but completion_per_million is not"):
        load_config(EvalConfig, None, ["price.prompt_per_million=1"])
    with pytest.raises(ConfigError, match="price.currency: unknown key"):
        load_config(EvalConfig, None, ["price.currency=USD"])


def _questions(tmp_path):
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps({"id": f"x{i}", "question": f"What is the key of {n}?", "answers": [v],
                                      "gold_ids": [f"doc{i}"]}) + "\n" for i, (n, v) in enumerate(zip(NAMES, VALUES))))
    return qs


def _systems(url):
    """The closed-book reader says "unknown" (never right); the gateway reader finds every answer; a third,
    priced on its own, answers from the first passage retrieved (a distractor: never right either)."""
    return json.dumps([
        {"name": "closed", "base_url": url, "model": "reader", "retrieval": "off"},
        {"name": "rag", "base_url": url, "model": "reader", "retrieval": "gateway", "top_k": 3},
        {"name": "hosted", "base_url": url, "model": "first-doc", "retrieval": "gateway", "top_k": 3,
         "price": {"prompt_per_million": 0.0, "completion_per_million": 0.0}}])


def test_eval_reports_latency_tokens_and_cost_per_system(tmp_path, capsys):
    out = tmp_path / "r"
    with FakeOpenAI(CORPUS, delay=0.02) as server:
        rc = main(["eval", "--data", str(_questions(tmp_path)), "--out", str(out), f"systems={_systems(server.base_url)}",
                   "price.prompt_per_million=3", "price.completion_per_million=15"])
        assert rc == 0
        requests = list(server.requests)
    report = json.loads((out / "report.json").read_text())
    runs = {r["system"]: r for r in report["runs"]}
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    # every answer carries the counts its reply reported (the fake counts words) and their cost
    sent = sorted(sum(len(m["content"].split()) for m in r["messages"]) for r in requests)
    assert sorted(p["prompt_tokens"] for p in preds) == sent
    for p in preds:
        assert p["completion_tokens"] == len(p["raw"].split())
        expected = 0.0 if p["system"] == "hosted" else (3 * p["prompt_tokens"] + 15 * p["completion_tokens"]) / 1e6
        assert p["cost"] == pytest.approx(expected)
    for name, run in runs.items():
        mine = [p for p in preds if p["system"] == name]
        assert run["prompt_tokens"] == pytest.approx(sum(p["prompt_tokens"] for p in mine) / len(mine))
        assert run["completion_tokens"] == pytest.approx(sum(p["completion_tokens"] for p in mine) / len(mine))
        assert 0.02 <= run["latency_p50_s"] <= run["latency_p95_s"]
        assert run["latency_p50_s"] == pytest.approx(percentile([p["latency_s"] for p in mine], 50))
    rag = runs["rag"]
    assert rag["em"] == 1.0 and rag["correct"] == 6
    assert rag["cost_per_correct"] == pytest.approx(sum(p["cost"] for p in preds if p["system"] == "rag") / 6)
    assert rag["price"] == {"prompt_per_million": 3.0, "completion_per_million": 15.0}
    assert runs["hosted"]["price"] == {"prompt_per_million": 0.0, "completion_per_million": 0.0}
    assert runs["hosted"]["cost"] == 0.0 and runs["hosted"]["cost_per_correct"] is None  # none correct
    assert runs["closed"]["em"] == 0.0 and runs["closed"]["cost_per_correct"] is None
    # the summary: rag is the only one right, so it is also the cheapest per correct answer (the free
    # system has no correct answer); the gateway systems send the bare question, and the first-doc reader
    # answers without a quote, so it spends the fewest tokens
    best = report["best"]["main"]
    assert best["em"]["systems"] == ["rag"] and best["cost_per_correct"]["systems"] == ["rag"]
    assert best["tokens_per_answer"]["systems"] == ["hosted"]
    assert runs["hosted"]["tokens_per_answer"] < min(runs["rag"]["tokens_per_answer"],
                                                     runs["closed"]["tokens_per_answer"])
    md = (out / "report.md").read_text()
    assert "## Summary: best system per metric" in md and "| main | rag (1.000) |" in md
    assert "latency p50 (s) | latency p95 (s) | prompt tokens | completion tokens" in md
    assert "cost / correct" in md
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "best (main runs): best EM rag (1.000)" in err and "lowest cost per correct answer rag" in err


def test_an_endpoint_without_usage_shows_no_token_counts(tmp_path, capsys):
    out = tmp_path / "r"
    with FakeOpenAI(CORPUS) as server:
        server.usage = False
        rc = main(["eval", "--data", str(_questions(tmp_path)), "--base-url", server.base_url, "--model", "reader",
                   "--retrieval", "gateway", "--out", str(out), "price.prompt_per_million=1",
                   "price.completion_per_million=1"])
        assert rc == 0
    run = json.loads((out / "report.json").read_text())["runs"][0]
    assert run["em"] == 1.0 and run["usage_missing"] == 6
    assert run["prompt_tokens"] is None and run["completion_tokens"] is None and run["cost_per_correct"] is None
    assert run["latency_p50_s"] is not None
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(p["prompt_tokens"] is None and p["completion_tokens"] is None and p["cost"] is None for p in preds)
    md = (out / "report.md").read_text()
    # no figures at all: the columns go (latency is measured by the client, so it stays)
    assert "| <ANSWER> rate | latency p50 (s) | latency p95 (s) | n | errors |" in md


def test_console_table_fits_100_columns_with_whole_headers():
    from rich.console import Console

    price = {"prompt_per_million": 1.0, "completion_per_million": 1.0}
    runs = [{"label": f"{name} distractors={n}", "em": 0.123, "f1": 0.456, "recall@10": 0.789,
             "quote_validity": 0.5, "latency_p50_s": 12.345, "latency_p95_s": 123.456, "prompt_tokens": 12345.6,
             "completion_tokens": 1234.5, "cost_per_correct": 1.234e-05, "price": price, "errors": 1000}
            for name in ("a-rather-long-system-name+RAG", "RAFT+RAG") for n in (0, 10)]
    console = Console(width=100, record=True, file=open("/dev/null", "w"))
    console.print(summary_table({"runs": runs}, 10))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text
    for header in ("EM", "F1", "recall", "@10", "quote", "valid", "p50", "p95", "prompt", "compl.", "tokens",
                   "cost /", "correct", "errors"):
        assert header in text, header
    # seconds to 0.1 and whole tokens on the terminal (report.md keeps full precision)
    for value in ("12.3", "123.5", "12346", "1234", "1.234e-05", "1000"):
        assert value in text, value
    assert "12.345" not in text and "12345.6" not in text
    # at 80 columns, with no failed request (no errors column), each run's name fits on its line
    for r in runs:
        r["errors"] = 0
    narrow = [{**r, "label": f"RAFT+RAG top_k={i}", "price": None, "cost_per_correct": None, "latency_p95_s": 100.7,
               "prompt_tokens": 479.4, "completion_tokens": 46.0} for i, r in enumerate(runs)]
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(summary_table({"runs": narrow}, 5))
    text = console.export_text()
    assert "errors" not in text and all(f"RAFT+RAG top_k={i}  " in text for i in range(len(narrow)))
    # no price anywhere: no cost column
    for r in runs:
        r["price"], r["cost_per_correct"] = None, None
    console = Console(width=100, record=True, file=open("/dev/null", "w"))
    console.print(summary_table({"runs": runs}, 10))
    assert "cost" not in console.export_text()
