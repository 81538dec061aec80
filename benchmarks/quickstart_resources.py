"""Wall time and memory of `raft quickstart`, the README's main job, measured from outside.

Runs `raft quickstart` in a fresh output directory and samples, every `--interval` seconds, the resident
memory (RSS) of every process it starts: the `raft` verbs, the Ray head and its workers, the serving
gateway and both batched engines (the base model's and the RAFT model's). Reports the peak of the sum over all of them, the peak per
step, each step's seconds (from the quickstart's own summary) and the load average before and after, so
that a figure taken on a busy host can be told apart. Targets (the quickstart's promise): at most 12 minutes
after the install on 2 idle cores, under 8 GB RSS in all. Writes benchmarks/results/quickstart_resources.{json,png}.

    python benchmarks/quickstart_resources.py                 # the converted model cached: a warm run
    python benchmarks/quickstart_resources.py --cold          # converts the GGUF again (a first run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def tree_rss(root: int) -> tuple[int, int]:
    """(bytes of RSS summed over `root` and its descendants, number of processes)."""
    import psutil

    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, len(procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--cold", action="store_true", help="use an empty model cache, so the GGUF is converted")
    ap.add_argument("--name", default="quickstart_resources")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="raft-qs-bench-"))
    env = {**os.environ}
    if args.cold:
        env["RAFT_CACHE_DIR"] = str(out / "cache")
    load_before = os.getloadavg()
    samples: list[tuple[float, int, int]] = []
    log = open(out / "console.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "raft.cli", "quickstart", "--out", str(out / "qs")],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, n = tree_rss(proc.pid)
            samples.append((time.monotonic() - t0, rss, n))
            stop.wait(args.interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.monotonic() - t0
    stop.set()
    th.join()
    log.close()
    load_after = os.getloadavg()
    summary_file = out / "qs" / "quickstart_summary.json"
    qs = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    console_lines = (out / "console.log").read_text().count("\n")
    peak = max(samples, key=lambda s: s[1]) if samples else (0, 0, 0)
    # the peak inside each step, from the step boundaries the quickstart's timings give
    steps, at, per_step = qs.get("timings", {}), qs.get("started_at_s", {}), {}
    for name, secs in steps.items():
        start = at.get(name)
        if start is None:
            continue
        inside = [s[1] for s in samples if start <= s[0] <= start + secs]
        per_step[name] = round(max(inside) / 2**30, 2) if inside else None
    result = {
        "exit_code": rc, "wall_s": round(wall, 1), "quickstart_total_s": qs.get("total_s"),
        "peak_rss_gib": round(peak[1] / 2**30, 2), "peak_at_s": round(peak[0], 1), "processes_at_peak": peak[2],
        "peak_rss_gib_by_step": per_step, "step_seconds": steps, "console_lines": console_lines,
        "load_average_before": load_before, "load_average_after": load_after, "cold_model_cache": args.cold,
        "cpus": os.cpu_count(), "targets": {"wall_s": 720, "peak_rss_gib": 8 * 1e9 / 2**30},
        "eval": qs.get("eval", {}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot([s[0] for s in samples], [s[1] / 2**30 for s in samples], lw=1)
        for name, start in at.items():
            ax.axvline(start, color="grey", lw=0.5)
            ax.text(start, ax.get_ylim()[1] * 0.95, name.split(". ", 1)[-1][:14], rotation=90, fontsize=7,
                    va="top")
        ax.axhline(8e9 / 2**30, color="red", ls="--", lw=0.8, label="8 GB target")
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS, all processes (GiB)")
        ax.set_title(f"raft quickstart: {wall:.0f} s, peak {peak[1] / 2**30:.2f} GiB")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    except ImportError:
        pass
    print(json.dumps({k: result[k] for k in ("exit_code", "wall_s", "peak_rss_gib", "peak_rss_gib_by_step",
                                             "console_lines", "load_average_before", "load_average_after")},
                     indent=1))
    print(f"wall {wall:.0f} s vs 720 s target: {wall / 720:.2f}x; peak RSS {peak[1] / 1e9:.2f} GB vs 8 GB: "
          f"{peak[1] / 8e9:.2f}x; console output {console_lines} lines; outputs in {out}")
    if rc == 0:
        shutil.rmtree(out / "qs" / "ray", ignore_errors=True)  # checkpoints: the biggest part, not needed


if __name__ == "__main__":
    main()
