"""A small wrapper over rich.progress: bars with counts, rates and elapsed time, or nothing when disabled."""

from __future__ import annotations


class Progress:
    def __init__(self, enabled: bool = True, console=None):
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn)

            rate = TextColumn("{task.fields[rate]}")
            self._p = RichProgress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                                   rate, TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self):
        if self._p:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)

    def add(self, name: str, total: int):
        return self._p.add_task(name, total=total, rate="") if self._p else None

    def advance(self, task, n: int = 1) -> None:
        if self._p is None:
            return
        self._p.advance(task, n)
        t = next((t for t in self._p.tasks if t.id == task), None)
        speed = t.speed if t is not None else None
        self._p.update(task, rate=f"{speed:7.1f}/s" if speed else "")
