"""Attention for packed rows without flash-attention: causal SDPA run on each example of the row.

A packed row needs attention kept inside each example. sdpa/eager can only do that with a dense
[T, T] block-diagonal mask, which costs the whole square, uses the slow masked kernels and made packing
slower than padding on CPU. This kernel instead reads the example boundaries off the restarted
position_ids and calls `scaled_dot_product_attention(is_causal=True)` on each example's slice: the fused
causal kernels (CPU flash, CUDA flash/efficient), the work of the causal pairs only, no mask in memory.
Models that cap attention scores (Gemma-2) or whose sliding window is shorter than an example get those
examples' scores computed explicitly, with the cap and the window applied.
`raft train` uses it for `optim.batching=pack` unless `model.attn_implementation` names another kernel
(flash_attention_2 does the same in one varlen call). Registered with transformers' AttentionInterface
under NAME, with a mask function that builds no mask.
"""

from __future__ import annotations

NAME = "raft_packed"  # no "sdpa" in it: transformers would refuse it for models without sdpa support


def _segment(q, k, v, scaling, dropout: float, window: int | None, softcap: float | None):
    """Causal attention of one example: the fused SDPA kernel, or explicit scores where the model caps
    them (Gemma-2's softcap) or a sliding window cuts this example (a query sees `window` keys, itself
    included, as transformers' sliding-window mask does)."""
    import torch

    L = q.shape[2]
    if softcap is None and (window is None or window >= L):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                dropout_p=dropout)
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    i = torch.arange(L, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(torch.nn.functional.dropout(probs, p=dropout), v)


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """query [B, Hq, T, D], key/value [B, Hkv, T, D] -> ([B, T, Hq, D], None). A position id of 0 starts
    an example; without position_ids each row is one sequence."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    pos = kwargs.get("position_ids")
    T = query.shape[2]
    rows = []
    for b in range(query.shape[0]):
        starts = [0] if pos is None else (pos[b if pos.shape[0] > 1 else 0] == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        parts = [_segment(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e], scaling,
                          dropout, sliding_window, softcap) for s, e in zip(starts, [*starts[1:], T])]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None


def register() -> str:
    """Make NAME a valid `attn_implementation` (idempotent; each Ray worker process calls it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    return NAME
