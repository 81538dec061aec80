"""Crash injection for the index's save path: replaces `retrieval.generations.crash_point` (a no-op marking
the points where a save has written some of a generation's files but not the manifest)."""

from __future__ import annotations

import os
import time

CRASH_EXIT_CODE = 17


def install(crash_at: str | None = None, pause_s: float = 0.0) -> None:
    """From now on, in this process: pause `pause_s` at every crash point, and exit at once (as a killed
    process would: no cleanup, no flush) with CRASH_EXIT_CODE at the one named `crash_at`."""
    import retrieval.generations
    import retrieval.index

    def crash_point(name: str) -> None:
        if pause_s:
            time.sleep(pause_s)
        if name == crash_at:
            os._exit(CRASH_EXIT_CODE)

    # retrieval.index imported the function by name, so both bindings are replaced
    retrieval.generations.crash_point = crash_point
    retrieval.index.crash_point = crash_point
