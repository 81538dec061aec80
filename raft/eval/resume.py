"""`raft eval --resume`: reuse the answers an interrupted run already paid for.

Every scored row carries a fingerprint of what decides its answer: the system (minus its URL, key and price:
an engine restarted on another port gives the same answers), the question file, the prompt version and the
generation settings. A resumed run reuses a row from OUT/predictions.partial.jsonl only where the system,
the sweep point, the question and the fingerprint all match and the request did not fail; everything else
is asked again. The cost of a reused row is recomputed at today's price.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raft.eval.config import EvalConfig, SystemConfig
from raft.prompt import PROMPT_VERSION

RowKey = tuple[str, str, Any, str]  # system, sweep, sweep value, question id


def answer_fingerprint(cfg: EvalConfig, system: SystemConfig) -> str:
    """A short hash of every setting that can change this system's answer to a question."""
    # a system without extra_body hashes as it did before the field existed: its earlier answers stay reusable
    skip = {"base_url", "api_key", "price"} | ({"extra_body"} if system.extra_body is None else set())
    what = {"system": system.model_dump(mode="json", exclude=skip),
            "data": cfg.data, "split": cfg.split, "prompt": PROMPT_VERSION, "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature, "seed": cfg.seed, "answer_style": cfg.answer_style,
            "gold_level": cfg.gold_level, "k_values": cfg.k_values,
            "judge": cfg.judge.model_dump(mode="json", exclude={"base_url", "api_key"}) if cfg.judge.enabled else None}
    if system.retrieval == "local":
        what |= {"index": cfg.index, "embedder": cfg.embedder,
                 "rerank": cfg.rerank.model_dump(mode="json") if system.rerank else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def row_key(row: dict[str, Any]) -> RowKey:
    return row["system"], row["sweep"], row["value"], str(row["id"])


def load_done(path: Path, cfg: EvalConfig) -> tuple[dict[RowKey, dict[str, Any]], int]:
    """The reusable rows of a partial predictions file, and how many rows were not reusable (failed
    requests, another configuration, an unreadable last line cut short by the interruption)."""
    wanted = {s.name: answer_fingerprint(cfg, s) for s in cfg.systems}
    done: dict[RowKey, dict[str, Any]] = {}
    skipped = 0
    if not path.is_file():
        return done, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            key = row_key(row)
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped += 1
            continue
        if row.get("error") is None and row.get("fingerprint") == wanted.get(row["system"]):
            done[key] = row
        else:
            skipped += 1
    return done, skipped
