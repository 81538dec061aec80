"""The model side of the batched engine: one causal LM, prompts in, texts out, several prompts per forward pass.

On a CPU (and on a small GPU) a 100M–1B model decodes at a speed set by reading its weights, not by arithmetic,
so eight sequences advance for little more than the price of one. `transformers serve` generates one request at
a time (its continuous-batching mode runs a paged-attention path that is far slower on a CPU), which is why this
engine exists: plain `model.generate` over a left-padded batch.

On a CPU the prompts are read before `generate`, one at a time when their lengths differ, into a cache with room for
the answers (serving/batched/kv_cache.py): padding and per-step cache copies, not arithmetic, were most of a batch's
time there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger("raft.batched")  # the engine's logger (serving/batched/app.py)


@dataclass
class GenRequest:
    """One prompt to complete: chat `messages` (rendered with the model's chat template) or a raw `prompt`."""

    messages: Optional[list[dict[str, Any]]] = None
    prompt: Optional[str] = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    quote_guard: bool = False
    """Keep the quotes of the answer inside the prompt's documents (serving/batched/quote_guard.py)."""

    def sampling_key(self) -> tuple:
        """Requests that may share one generate() call: chat with chat and raw prompts with raw prompts (they are
        tokenized differently), greedy with greedy, sampled with the same settings."""
        kind = "chat" if self.messages is not None else "text"
        if self.temperature <= 0:
            return (kind, "greedy")
        return (kind, "sample", round(self.temperature, 4), round(self.top_p, 4), self.seed)


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


def _content(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class BatchGenerator:
    """A causal LM and its tokenizer, loaded once; `generate` completes a batch of requests in one call."""

    def __init__(self, model_path: str | Path, device: str = "cpu", dtype: str = "auto",
                 threads: int | str | None = None):
        """`threads`: torch CPU threads, "auto" (per batch, from the cores the last batch found free:
        serving/batched/threads.py), or None (torch's choice)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.threads = None
        if threads == "auto":
            from serving.batched.threads import AdaptiveThreads

            self.threads = AdaptiveThreads()
        elif threads:
            torch.set_num_threads(int(threads))
        self.path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every row
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # A fast tokenizer keeps its padding settings as state that every call rewrites, so two threads sharing
        # one can pad a batch to ragged rows or raise "Already borrowed". `tokenizer` belongs to the thread that
        # generates; the server's event loop counts prompt tokens with its own copy, one caller at a time.
        self._counter = AutoTokenizer.from_pretrained(self.path)
        self._counter_lock = threading.Lock()
        torch_dtype = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16,
                       "fp16": torch.float16}[dtype]
        if device == "cpu" and dtype == "auto":
            torch_dtype = torch.float32  # CPUs without bf16 units are slower, not faster, in half precision
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.prefill_first = device == "cpu"
        """Read the prompts before `generate` into a preallocated cache (serving/batched/kv_cache.py). Off on a GPU,
        where a padded batch is read in parallel: `generate` keeps its own cache there (measured on a CPU only)."""
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

    def render(self, req: GenRequest, tokenizer=None) -> str:
        if req.messages is not None:
            msgs = [{"role": m.get("role", "user"), "content": _content(m)} for m in req.messages]
            return (tokenizer or self.tokenizer).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return req.prompt or ""

    def count_prompt_tokens(self, req: GenRequest) -> int:
        with self._counter_lock:
            text = self.render(req, self._counter)
            return len(self._counter(text, add_special_tokens=req.messages is None)["input_ids"])

    def generate(self, batch: Sequence[GenRequest]) -> list[GenResult]:
        """Complete every request of `batch` (all with the same `sampling_key`) in one `generate` call."""
        import torch

        if not batch:
            return []
        first = batch[0]
        texts = [self.render(r) for r in batch]
        # a chat template already holds the BOS token; a raw prompt gets the tokenizer's special tokens
        enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                             add_special_tokens=first.messages is None).to(self.device)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        max_new = max(r.max_tokens for r in batch)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p)
            if first.seed is not None:
                torch.manual_seed(first.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        processors = []
        if any(r.quote_guard for r in batch):
            from serving.batched.quote_guard import QuoteGuard

            processors.append(QuoteGuard(self.tokenizer, [t if r.quote_guard else None for r, t in zip(batch, texts)],
                                         enc["input_ids"].shape[1]))
        if self.threads is not None:
            from serving.batched.threads import StepProbe

            processors.append(StepProbe(self.threads))  # --threads auto decides again while the batch decodes
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if self.threads is not None:
            self.threads.before()
        try:
            with torch.inference_mode():
                if self.prefill_first:
                    kwargs.update(self._prefill(enc, room=max_new))
                out = self.model.generate(**enc, **kwargs)
        finally:
            if self.threads is not None:
                self.threads.after()
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        return [self._finish(req, ids, n_prompt) for req, ids, n_prompt in zip(batch, new, prompt_lens)]

    def _prefill(self, enc, room: int) -> dict[str, Any]:
        """`generate`'s cache keyword, read ahead (serving/batched/kv_cache.py), or nothing for `generate`'s own."""
        from serving.batched.kv_cache import NotPlainCache, prefill  # imports transformers: not at module import

        try:
            return prefill(self.model, enc, room=room) or {}
        except NotPlainCache as e:  # the model's cache stays the same: stop trying
            self.prefill_first = False
            log.info("prompts are read by generate itself: the model's cache is %s", e)
            return {}

    def _finish(self, req: GenRequest, ids: list[int], n_prompt: int) -> GenResult:
        reason = "length"
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids, reason = ids[:i], "stop"
                break
        if len(ids) > req.max_tokens:  # the batch ran to its longest request's limit
            ids, reason = ids[: req.max_tokens], "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = [text.index(s) for s in req.stop if s and s in text]
        if cut:
            text, reason = text[: min(cut)], "stop"
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return GenResult(text=text, prompt_tokens=int(n_prompt), completion_tokens=len(ids),
                         finish_reason=reason)


def warm_up(gen: BatchGenerator, quote_guard: bool = False) -> float:
    """One short generation, so the first real request does not pay for lazy initialisation; seconds taken.
    With `quote_guard` the guard's token table is built here too (one decode per vocabulary entry, about half a
    second for SmolLM2), not on the first guarded request."""
    t0 = time.perf_counter()
    gen.generate([GenRequest(prompt="Hello", max_tokens=2)])
    if quote_guard:
        from serving.batched.quote_guard import piece_table

        piece_table(gen.tokenizer)
    return time.perf_counter() - t0
