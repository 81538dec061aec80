"""Micro-batches by token budget, and their tensors.

- `pack`: padding-free. Examples are concatenated into one row of at most `batch_tokens` tokens; position_ids
  restart at 0 for each example and no attention mask is passed, so transformers builds a block-diagonal
  causal mask from the position_ids (sdpa/eager on CPU) or uses varlen kernels (flash-attention on GPU).
  Labels at each example's first token are -100 (it is a prompt token), so nothing is learned across
  example boundaries.
- `group`: length-grouped padded batches: examples sorted by length inside shuffled windows, cut so that
  rows x longest <= batch_tokens. Little padding, works with every attention kernel.
- `pad`: the naive baseline: shuffled, fixed rows per batch (batch_tokens // max_seq_len), padded.

Batches are built identically on every worker from the epoch seed, then dealt round-robin; every worker
gets the same number, so DDP collectives never wait on a worker that ran out of data.
"""

from __future__ import annotations

import random


def make_batches(lengths: list[int], batch_tokens: int, mode: str, seed: int, max_seq_len: int,
                 window: int = 256) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    batches: list[list[int]] = []
    if mode == "pack":
        cur, used = [], 0
        for i in order:
            if cur and used + lengths[i] > batch_tokens:
                batches.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += lengths[i]
        if cur:
            batches.append(cur)
    elif mode == "group":
        for w in range(0, len(order), window):
            chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
            cur, longest = [], 0
            for i in chunk:
                if cur and max(longest, lengths[i]) * (len(cur) + 1) > batch_tokens:
                    batches.append(cur)
                    cur, longest = [], 0
                cur.append(i)
                longest = max(longest, lengths[i])
            if cur:
                batches.append(cur)
        rng.shuffle(batches)
    elif mode == "pad":
        rows = max(1, batch_tokens // max_seq_len)
        batches = [order[k:k + rows] for k in range(0, len(order), rows)]
    else:
        raise ValueError(f"unknown batching mode {mode!r}")
    return batches


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This worker's batches; all workers get len(batches) // world of them."""
    n = len(batches) // world
    return batches[rank::world][:n]


def collate(examples: list[dict], idx: list[int], mode: str, pad_id: int) -> dict:
    """Tensors for one micro-batch (`pack`: one row with position_ids; else padded rows with a mask)."""
    import torch

    rows = [examples[i] for i in idx]
    if mode == "pack":
        ids = [t for r in rows for t in r["input_ids"]]
        labels = [t for r in rows for t in r["labels"]]
        pos = [p for r in rows for p in range(len(r["input_ids"]))]
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([pos])}
    longest = max(len(r["input_ids"]) for r in rows)
    ids = [r["input_ids"] + [pad_id] * (longest - len(r["input_ids"])) for r in rows]
    labels = [r["labels"] + [-100] * (longest - len(r["labels"])) for r in rows]
    mask = [[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def real_tokens(batch: dict) -> int:
    """Non-padding tokens in a collated batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
