"""The short end-of-build report printed by `raft build`."""

from __future__ import annotations


def print_summary(s: dict, console) -> None:
    a, q, t, calls = s["answers"], s["questions"], s["tokens"], s["teacher_calls"]
    rate = a["quote_verification_rate"]
    lines = [
        f"chunks      {s['chunks']['total']} ({s['chunks']['empty_skipped']} empty skipped)",
        f"questions   {q['count']} (from {q['source']})",
        f"answers     kept {a['kept']}, dropped {a['dropped']}"
        + (": " + ", ".join(f"{k}={v}" for k, v in sorted(a["dropped_by_reason"].items())) if a["dropped"] else ""),
        f"quotes      {a['quotes_verified']}/{a['quotes_total']} verified"
        + (f" ({rate:.1%})" if rate is not None else ""),
        f"teacher     {calls['made']} calls, {calls['from_cache']} from cache, {calls['retries']} retries; "
        f"tokens {t['prompt']} prompt + {t['completion']} completion",
        f"records     {s['records']} " + " ".join(f"{k}={v}" for k, v in sorted(s["splits"].items()))
        + f"; oracle shown in {s['mixing'].get('oracle_included', 0)}",
        f"time        {s['seconds']:.1f}s",
        f"output      {s['out']}",
    ]
    console.print("[bold]raft build[/] done", highlight=False)
    for line in lines:
        console.print("  " + line, highlight=False, markup=False)
