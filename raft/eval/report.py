"""Write an evaluation's results: report.json (everything), predictions.jsonl (one row per answer),
report.md (the comparison table and the sweeps) and PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAIN_COLUMNS = ["em", "f1", "recall@*", "mrr", "quote_validity", "citation_precision", "citation_recall",
                "judge", "answer_tag_rate"]
HEADERS = {"em": "EM", "f1": "F1", "mrr": "MRR", "quote_validity": "quote valid",
           "citation_precision": "cite P", "citation_recall": "cite R", "judge": "judge (1-5)",
           "answer_tag_rate": "<ANSWER> rate"}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


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
        cells = [_fmt(r.get(k)) for k, _ in first] + [_fmt(r.get(c)) for c in cols] + [_fmt(r["n"]), _fmt(r["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any], k_values: list[int], data: str) -> str:
    """The human-readable report."""
    runs = result["runs"]
    cols = _columns(k_values)
    out = ["# RAFT evaluation report", "",
           f"- data: `{data}` ({result['n_items']} questions, answers normalised as `{result['answer_style']}`)",
           f"- time: {result['elapsed_s']} s", "",
           "## Systems", "",
           ("Base model without retrieval, with retrieval, and the RAFT adapter with retrieval, on the same "
           "questions. recall@k and MRR score the passages retrieved (gateway citations or the local index); "
           "quote validity is the share of `##begin_quote##` spans found verbatim in a shown document; "
           "citation P/R compare cited passages with the gold ones."), ""]
    out += _table([r for r in runs if r["sweep"] == "main"],
                  [("system", "system"), ("retrieval", "retrieval"), ("model", "model")], cols)
    for sweep, title, what in (("top_k", "Robustness: top-k", "top-k"),
                               ("distractors", "Robustness: distractors shown with the oracle", "distractors")):
        rows = [r for r in runs if r["sweep"] == sweep]
        if rows:
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
