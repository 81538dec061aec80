"""The short end-of-build report printed by `raft build`."""

from __future__ import annotations

MAX_SKIPPED_SHOWN = 10


def print_summary(s: dict, console) -> None:
    a, q, t, calls = s["answers"], s["questions"], s["tokens"], s["teacher_calls"]
    rate = a["quote_verification_rate"]
    lines = [
        f"chunks      {s['chunks']['total']} ({s['chunks']['empty_skipped']} empty skipped)",
        f"questions   {q['count']} (from {q['source']})",
        f"answers     kept {a['kept']}, dropped {a['dropped']}"
        + (": " + ", ".join(f"{k}={v}" for k, v in sorted(a["dropped_by_reason"].items())) if a["dropped"] else ""),
        # answered, then dropped while mixing: answers kept - mix dropped = records
        *([f"mix         dropped {m['dropped']}: "
           + ", ".join(f"{k}={v}" for k, v in sorted(m["dropped_by_reason"].items()))]
          if (m := s["mixing"]).get("dropped") else []),
        f"quotes      {a['quotes_verified']}/{a['quotes_total']} verified"
        + (f" ({rate:.1%})" if rate is not None else ""),
        *([f"ray         answers by {r['actors']} actor(s) on {r['address']}: {r['questions_sent']} question(s) sent"
           + ("" if r["questions_sent"] else " (all from the cache)")] if (r := s.get("ray")) else []),
        f"teacher     {calls['made']} calls, {calls['from_cache']} from cache, {calls['retries']} retries; "
        f"tokens {t['prompt']} prompt + {t['completion']} completion",
        f"records     {s['records']} " + " ".join(f"{k}={v}" for k, v in sorted(s["splits"].items()))
        + f"; oracle shown in {s['mixing'].get('oracle_included', 0)}",
        *([f"split by    {g['group_by']}: {g['groups']} group(s); {g['documents_without_key']} of {g['documents']} "
           "document(s) without the key, each its own group"] if (g := s.get("split_groups")) else []),
        f"time        {s['seconds']:.1f}s",
        f"output      {s['out']}",
    ]
    skipped = s.get("skipped_files") or []
    if skipped:  # as `raft index build` lists them: a file left out of the corpus is worth knowing about
        lines[1:1] = ([f"skipped     {len(skipped)} corpus file(s)/record(s):"]
                      + [f"  {x['path']}: {x['reason']}" for x in skipped[:MAX_SKIPPED_SHOWN]]
                      + ([f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more (build_summary.json lists all)"]
                         if len(skipped) > MAX_SKIPPED_SHOWN else []))
    console.print("[bold]raft build[/] done", highlight=False)
    for line in lines:
        console.print("  " + line, highlight=False, markup=False)
