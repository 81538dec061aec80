"""Causal-LM loss that runs the output head only where a token is trained.

A RAFT example is mostly prompt: the oracle and distractor documents and the question carry no loss. A
plain `model(**batch, labels=...)` (what Trainer, TRL and axolotl do) still multiplies every position by
the vocab x hidden output matrix and holds [tokens, vocab] logits: a fifth of a 1B Llama's forward FLOPs,
and 2 GB of fp32 logits for one 4k-token row at a 128k vocabulary. A forward pre-hook on the output
embedding passes on only the hidden states whose next token has a label, so the head, the logits and the
cross-entropy cover the answer alone. Logit post-processing that models apply after the head (Gemma's
softcapping, Cohere's scale) is elementwise and still applies. Loss and gradients equal the full
computation's (tests/raft/train/test_loss.py).
"""

from __future__ import annotations


class TrainedPositionsLoss:
    """`loss(model, batch, num_items)` = summed next-token cross-entropy over labelled positions / num_items,
    the value transformers' causal-LM loss gives with `num_items_in_batch`.

    `model` may be the wrapped model (DDP/FSDP) around `peft_model`; the hook sits on the output embedding
    module, which wrapping keeps. With `trained_only=False`, or a head whose input is not [batch, seq, hidden]
    (the hook then steps aside), the full logits are computed and the same positions are picked from them."""

    def __init__(self, peft_model, trained_only: bool = True):
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        head = base.get_output_embeddings()
        self._select = None
        hook = trained_only and head is not None
        self._handle = head.register_forward_pre_hook(self._hook) if hook else None

    def _hook(self, module, args):
        sel = self._select
        if sel is None or not args or args[0].dim() != 3 or tuple(args[0].shape[:2]) != tuple(sel.shape):
            return None
        return (args[0][sel], *args[1:])

    def loss(self, model, batch: dict, num_items: int):
        import torch
        import torch.nn.functional as F

        labels = batch["labels"]
        target = torch.full_like(labels, -100)
        target[:, :-1] = labels[:, 1:]  # position t predicts token t + 1
        sel = target != -100
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        self._select = sel if self._handle is not None else None
        try:
            logits = model(**inputs, use_cache=False).logits
        finally:
            self._select = None
        if logits.dim() == 3:  # the hook did not apply
            logits = logits[sel]
        return F.cross_entropy(logits.float(), target[sel], reduction="sum") / max(1, num_items)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
