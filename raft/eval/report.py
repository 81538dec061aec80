"""Write an evaluation's results: report.json (everything), predictions.jsonl (one row per answer),
report.md (the comparison table and the sweeps) and PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAIN_COLUMNS = ["em", "f1", "recall@*", "mrr", "quote_validity", "citation_precision", "citation_recall",
                "judge", "answer_tag_rate", "latency_p50_s", "latency_p95_s", "prompt_tokens", "completion_tokens",
                "tokens_per_correct", "cost_per_correct"]
HEADERS = {"em": "EM", "f1": "F1", "mrr": "MRR", "quote_validity": "quote valid",
           "citation_precision": "cite P", "citation_recall": "cite R", "judge": "judge (1-5)",
           "answer_tag_rate": "<ANSWER> rate", "latency_p50_s": "latency p50 (s)", "latency_p95_s": "latency p95 (s)",
           "prompt_tokens": "prompt tokens", "completion_tokens": "completion tokens",
           "tokens_per_correct": "tokens / correct", "cost_per_correct": "cost / correct"}

# the summary's "best system per metric": (key in a run, what the winner is called, True = higher is better)
BEST_METRICS = [("em", "best EM", True), ("f1", "best F1", True), ("latency_p50_s", "lowest latency p50", False),
                ("tokens_per_answer", "fewest tokens per answer", False),
                ("cost_per_correct", "lowest cost per correct answer", False)]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def fmt_metric(key: str, v: Any) -> str:
    """One figure as the tables show it: token counts to 0.1, costs to 4 significant digits, None as '–'."""
    if v is None:
        return "–"
    if key in ("prompt_tokens", "completion_tokens", "tokens_per_answer", "tokens_per_correct"):
        return f"{v:.1f}"
    if key in ("cost", "cost_per_correct"):
        return f"{v:.4g}"
    return _fmt(v)


def _group(run: dict[str, Any]) -> str:
    return "main" if run["sweep"] == "main" else f"{run['sweep']}={run['value']}"


def best_per_metric(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{group: {metric: {"systems": [...], "value": v}}}: for the main runs ("main") and for each sweep point
    ("top_k=3", "distractors=4"), the system(s) with the best value of each metric in BEST_METRICS among
    those compared there. Ties name every tied system; a metric no run measured is left out, and so is a
    group with fewer than two systems (nothing to compare)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_group(r), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rows in groups.items():
        if len(rows) < 2:
            continue
        best: dict[str, dict[str, Any]] = {}
        for key, _, higher in BEST_METRICS:
            measured = [(r[key], r["system"]) for r in rows if r.get(key) is not None]
            if not measured:
                continue
            value = (max if higher else min)(v for v, _ in measured)
            best[key] = {"systems": [s for v, s in measured if abs(v - value) <= 1e-12], "value": value}
        if best:
            out[name] = best
    return out


def _best_value(key: str, v: Any) -> str:
    unit = {"latency_p50_s": " s", "tokens_per_answer": " tokens"}.get(key, "")
    return fmt_metric(key, v) + unit


def best_lines(best: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per group, for the console: `best (main runs): EM RAFT+RAG 0.620; ...`."""
    lines = []
    for group, metrics in best.items():
        parts = [f"{label} {', '.join(metrics[key]['systems'])} ({_best_value(key, metrics[key]['value'])})"
                 for key, label, _ in BEST_METRICS if key in metrics]
        lines.append(f"best ({'main runs' if group == 'main' else group}): " + "; ".join(parts))
    return lines


def _columns(k_values: list[int]) -> list[str]:
    cols = []
    for c in MAIN_COLUMNS:
        cols += [f"recall@{k}" for k in k_values] if c == "recall@*" else [c]
    return cols


def _table(runs: list[dict], first: list[tuple[str, str]], cols: list[str]) -> list[str]:
    cols = [c for c in cols if any(r.get(c) is not None for r in runs)]  # drop all-empty columns
    head = [h for _, h in first] + [HEADERS.get(c, c) for c in cols] + ["n", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = ([_fmt(r.get(k)) for k, _ in first] + [fmt_metric(c, r.get(c)) for c in cols]
                 + [_fmt(r["n"]), _fmt(r["errors"])])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _best_section(best: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The summary: which system is best at each metric, for the main runs and each sweep point."""
    if not best:
        return []
    keys = [(k, label) for k, label, _ in BEST_METRICS if any(k in m for m in best.values())]
    out = ["## Summary: best system per metric", "",
           ("Among the systems compared in the same runs (the main runs, or one sweep point); ties name every "
            "tied system. Latency is the median over answered requests; tokens are prompt + completion per "
            "answer, as the endpoints reported them; cost per correct answer is the price of all answers over "
            "the number of exact-match answers (with `price` set only)."), "",
           "| runs | " + " | ".join(label for _, label in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for group, metrics in best.items():
        cells = [f"{', '.join(metrics[k]['systems'])} ({_best_value(k, metrics[k]['value'])})" if k in metrics
                 else "–" for k, _ in keys]
        out.append(f"| {group} | " + " | ".join(cells) + " |")
    return out + [""]


def markdown(result: dict[str, Any], k_values: list[int], data: str) -> str:
    """The human-readable report."""
    runs = result["runs"]
    cols = _columns(k_values)
    out = ["# RAFT evaluation report", "",
           f"- data: `{data}` ({result['n_items']} questions, answers normalised as `{result['answer_style']}`)",
           f"- time: {result['elapsed_s']} s", "",
           *_best_section(result.get("best") or {}),
           "## Systems", "",
           ("Base model without retrieval, with retrieval, and the RAFT adapter with retrieval, on the same "
           "questions. recall@k and MRR score the passages retrieved (gateway citations or the local index); "
           "quote validity is the share of `##begin_quote##` spans found verbatim in a shown document; "
           "citation P/R compare cited passages with the gold ones. Latency p50/p95 are over answered requests; "
           "prompt and completion tokens are means per answer from the endpoints' `usage` (– when an endpoint "
           "reported none); tokens / correct and cost / correct divide the totals of all answers by the number "
           "of exact-match answers (– when none is correct; cost only with `price` set)."), ""]
    out += _table([r for r in runs if r["sweep"] == "main"],
                  [("system", "system"), ("retrieval", "retrieval"), ("model", "model")], cols)
    for sweep, title, what in (("top_k", "Robustness: top-k", "top-k"),
                               ("distractors", "Robustness: distractors shown with the oracle", "distractors")):
        order = {name: i for i, name in enumerate(dict.fromkeys(r["system"] for r in runs))}
        rows = sorted((r for r in runs if r["sweep"] == sweep), key=lambda r: (order[r["system"]], r["value"]))
        if rows:  # each system's points in ascending order, whatever order they ran in
            out += ["", f"## {title}", ""]
            out += _table(rows, [("system", "system"), ("value", what)], cols)
            out += ["", f"![{sweep}](sweep_{sweep}.png)"]
    if result.get("distractor_sweep_skipped"):
        out += ["", ("_Distractor sweep skipped: no question carries a known oracle document "
                     "(use RAFT records from `raft build`)._")]
    if any(r["sweep"] == "main" for r in runs):
        out += ["", "![systems](systems.png)"]
    return "\n".join(out) + "\n"


def _plots(result: dict[str, Any], out: Path, k_values: list[int]) -> list[str]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    main = [r for r in result["runs"] if r["sweep"] == "main"]
    if main:
        metrics = [m for m in ["em", "f1", f"recall@{max(k_values)}", "quote_validity", "citation_recall"]
                   if any(r.get(m) is not None for r in main)]
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(metrics) * max(1, len(main)) / 2), 3.6))
        width = 0.8 / max(1, len(main))
        for i, r in enumerate(main):
            xs = [j + i * width for j in range(len(metrics))]
            ax.bar(xs, [r.get(m) or 0.0 for m in metrics], width, label=r["system"])
        ax.set_xticks([j + width * (len(main) - 1) / 2 for j in range(len(metrics))])
        ax.set_xticklabels([HEADERS.get(m, m) for m in metrics])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Systems ({result['n_items']} questions)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "systems.png", dpi=110)
        plt.close(fig)
        written.append("systems.png")
    for sweep, xlabel in (("top_k", "top-k retrieved"), ("distractors", "distractors shown with the oracle")):
        rows = [r for r in result["runs"] if r["sweep"] == sweep]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name in dict.fromkeys(r["system"] for r in rows):
            pts = sorted((r["value"], r.get("em") or 0.0, r.get("f1") or 0.0) for r in rows if r["system"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} EM")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="x", linestyle="--", label=f"{name} F1")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title(f"Robustness over {xlabel}")
        fig.tight_layout()
        fig.savefig(out / f"sweep_{sweep}.png", dpi=110)
        plt.close(fig)
        written.append(f"sweep_{sweep}.png")
    return written


def write_report(result: dict[str, Any], out_dir: str | Path, *, config: dict, data: str,
                 k_values: list[int]) -> dict[str, str]:
    """Write all report files under `out_dir`; returns {kind: path}. JSON is written last, atomically,
    so a present report.json means a complete report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # replaced, not rewritten in place: `raft eval` streams the rows into it as they come, and a failure
    # here must leave those
    tmp = out / "predictions.jsonl.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in result["predictions"]:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(out / "predictions.jsonl")
    finally:
        tmp.unlink(missing_ok=True)
    (out / "report.md").write_text(markdown(result, k_values, data), encoding="utf-8")
    plots = _plots(result, out, k_values)
    summary = {k: v for k, v in result.items() if k != "predictions"}
    summary.update({"data": data, "config": config, "plots": plots})
    tmp = out / "report.json.tmp"
    try:
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(out / "report.json")
    finally:
        tmp.unlink(missing_ok=True)
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md"),
             "predictions": str(out / "predictions.jsonl")}
    files.update({p: str(out / p) for p in plots})
    return files
