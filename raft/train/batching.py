"""Micro-batches by token budget, and their tensors.

- `pack`: padding-free. Examples are first-fit into rows of `row_len` tokens; position_ids restart at 0 for
  each example. Kernels that find the examples from the position_ids (raft.train.attention's per-example
  SDPA, the default; flash-attention's varlen path) get no mask and one row of `batch_tokens`. Otherwise
  (`eager`) an explicit block-diagonal causal mask (4-D, additive) keeps attention inside each example,
  in rows of `max_seq_len`, `batch_tokens // max_seq_len` of them, so the dense masked attention costs
  O(max_seq_len^2) per row, not O(batch_tokens^2) (transformers derives that mask from the position_ids
  only when no attention mask is passed, and older versions never do, so it is passed explicitly). Rows
  are nearly full; the short tail that evens them out is its own segment.
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
                 window: int = 256, row_len: int | None = None) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    batches: list[list[int]] = []
    if mode == "pack":
        # first-fit into rows of `row_len` tokens, `batch_tokens // row_len` rows per micro-batch
        row_len = row_len or max_seq_len
        rows_per = max(1, batch_tokens // row_len)
        rows: list[list] = []  # [used, [indices]]
        for i in order:
            for r in rows:
                if r[0] + lengths[i] <= row_len:
                    r[0] += lengths[i]
                    r[1].append(i)
                    break
            else:
                if len(rows) == rows_per:
                    batches.append([j for r in rows for j in r[1]])
                    rows = []
                rows.append([lengths[i], [i]])
        if rows:
            batches.append([j for r in rows for j in r[1]])
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


def packed_kernel(batching: str, attn_implementation: str | None) -> bool:
    """Packed rows go to raft.train.attention's per-example SDPA (pack with sdpa or the default kernel)."""
    return batching == "pack" and attn_implementation in (None, "sdpa")


def varlen_attention(packed: bool, attn_implementation: str | None) -> bool:
    """The kernel finds each packed example from the position_ids, so packed rows need no mask and take one
    row of the whole budget. `packed`: raft.train.attention's kernel is in use (see `packed_kernel`)."""
    return packed or (attn_implementation or "").startswith("flash")


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This worker's batches; all workers get len(batches) // world of them."""
    n = len(batches) // world
    return batches[rank::world][:n]


def segment_mask(segments: list[list[int]]):
    """Additive 4-D mask [rows, 1, T, T]: causal, and a token sees only its own segment (example)."""
    import torch

    seg = torch.tensor(segments)
    T = seg.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    allowed = causal[None] & (seg[:, :, None] == seg[:, None, :])
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]


def collate(examples: list[dict], idx: list[int], mode: str, pad_id: int, row_len: int | None = None,
            mask_segments: bool = True) -> dict:
    """Tensors for one micro-batch (`pack`: rows with position_ids and, unless the attention kernel finds
    the examples itself (`mask_segments=False`), a block-diagonal mask; else padded rows with a mask)."""
    import torch

    rows = [examples[i] for i in idx]
    if mode == "pack":
        # split into rows of <= row_len in order (make_batches laid the indices out row by row)
        packed, cur = [], []
        for r in rows:
            if cur and sum(len(x["input_ids"]) for x in cur) + len(r["input_ids"]) > (row_len or 1 << 62):
                packed.append(cur)
                cur = []
            cur.append(r)
        packed.append(cur)
        width = max(sum(len(x["input_ids"]) for x in row) for row in packed)
        ids, labels, pos, segs = [], [], [], []
        for row in packed:
            i = [t for x in row for t in x["input_ids"]]
            lab = [t for x in row for t in x["labels"]]
            p = [k for x in row for k in range(len(x["input_ids"]))]
            s = [j for j, x in enumerate(row) for _ in x["input_ids"]]
            pad = width - len(i)  # the padding tail is its own segment (positions restart): attends to itself only
            ids.append(i + [pad_id] * pad)
            labels.append(lab + [-100] * pad)
            pos.append(p + list(range(pad)))
            segs.append(s + [len(row)] * pad)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(pos)}
        if mask_segments:
            out["attention_mask"] = segment_mask(segs)
        return out
    longest = max(len(r["input_ids"]) for r in rows)
    ids = [r["input_ids"] + [pad_id] * (longest - len(r["input_ids"])) for r in rows]
    labels = [r["labels"] + [-100] * (longest - len(r["labels"])) for r in rows]
    mask = [[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def real_tokens(examples: list[dict], idx: list[int]) -> int:
    """Tokens of the examples in a micro-batch (padding excluded)."""
    return sum(len(examples[i]["input_ids"]) for i in idx)
