"""The driver's view of a running `raft train`: one progress bar fed by the rank-0 worker's metrics.jsonl.

Workers run in Ray processes whose output goes to Ray's log files, not to the user's terminal (their
lines would be interleaved, prefixed and, for some Ray actors, repeated every few seconds). The driver
follows `metrics.jsonl` instead, which rank 0 appends to at every logged step, and shows steps, loss and
speed. Where that file is not on this machine (object-store runs, a worker on another node) the bar
still shows that training runs, and the summary at the end gives the figures.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


class TrainProgress:
    """`with TrainProgress(console, metrics_file): trainer.fit()`; polls the file from a thread."""

    def __init__(self, console, metrics_file: Path | None, interval: float = 0.5):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.file, self.interval = metrics_file, interval
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[stats]}"), console=console,
                                 transient=False)
        self.task = None
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="raft-train-progress", daemon=True)
        self.last: dict = {}

    def __enter__(self) -> "TrainProgress":
        if self.file is not None and self.file.is_file():
            self._offset = self.file.stat().st_size  # a resumed run appends: follow only the new rows
        self.progress.start()
        self.task = self.progress.add_task("starting Ray workers", total=None, stats="")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()
        self.progress.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        if self.file is None or not self.file.is_file():
            return
        with open(self.file, encoding="utf-8") as f:
            f.seek(self._offset)
            chunk = f.read()
        if not chunk.endswith("\n"):  # a row being written: take it on the next poll
            chunk = chunk[:chunk.rfind("\n") + 1]
        self._offset += len(chunk.encode("utf-8"))
        for line in chunk.splitlines():
            try:
                self.update(json.loads(line))
            except ValueError:
                continue

    def update(self, row: dict) -> None:
        """Apply one metrics row (public for tests)."""
        if row.get("event") == "start":
            self.progress.update(self.task, description="training", total=row.get("total_steps"),
                                 completed=row.get("step", 0))
        elif "train_loss" in row:
            # smoothed: one step's loss on a small batch jumps around; the bar should show the trend
            prev = self.last.get("loss_ema")
            ema = row["train_loss"] if prev is None else 0.8 * prev + 0.2 * row["train_loss"]
            self.last = {**row, "loss_ema": ema}
            stats = f"loss {ema:.3f}  {row.get('tokens_per_s', 0):.0f} tok/s"
            self.progress.update(self.task, completed=row["step"], stats=stats)
        elif "eval_loss" in row:
            stats = f"loss {self.last.get('loss_ema', float('nan')):.3f}  eval {row['eval_loss']:.3f}"
            self.progress.update(self.task, stats=stats)
