"""Examples -> token ids + labels (-100 everywhere except the answer), rendered with the model's chat template.

Answer tokens are found one of two ways:
- `generation`: the template marks assistant turns with {% generation %}; `return_assistant_tokens_mask`
  gives the mask directly (works for multi-turn chats: every assistant turn is learned);
- `prefix`: the prompt is rendered without the answer (`add_generation_prompt=True`), tokenized on its own,
  and the rest of the rendered text is tokenized after it. Tokenizing the prompt alone is what serving does
  before the model generates, so the ids the model learns to produce follow exactly the ids it will see.

Over-long examples are trimmed by documents, never by question or answer: distractors go first (last shown
first), then the remaining documents are shortened, then re-rendered through raft/prompt.py. An example whose
answer still does not fit is dropped and counted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from raft.errors import RaftError
from raft.train.data import Example


@dataclass
class TokenStats:
    """Length statistics printed before training."""

    kept: int = 0
    trimmed: int = 0
    dropped: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    answer_lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        def q(xs, p):
            return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else 0

        ls, al = self.lengths, self.answer_lengths
        return {"examples": self.kept, "trimmed_docs": self.trimmed, "dropped": len(self.dropped),
                "dropped_ids": self.dropped[:20], "tokens": sum(ls),
                "len_min": min(ls, default=0), "len_mean": round(statistics.fmean(ls), 1) if ls else 0,
                "len_p50": q(ls, 0.5), "len_p95": q(ls, 0.95), "len_max": max(ls, default=0),
                "answer_tokens": sum(al), "answer_len_mean": round(statistics.fmean(al), 1) if al else 0}


def has_generation_mask(tokenizer) -> bool:
    tpl = tokenizer.chat_template
    if isinstance(tpl, dict):
        tpl = tpl.get("default") or next(iter(tpl.values()), "")
    return bool(tpl) and "{% generation %}" in tpl.replace("{%- generation %}", "{% generation %}")


class Renderer:
    """Tokenizes examples the same way for training, evaluation and the benchmark."""

    def __init__(self, tokenizer, max_seq_len: int, label_mode: str = "auto", no_chat_template: str = "error",
                 model_name: str = "the model"):
        self.tok = tokenizer
        self.max_len = max_seq_len
        self.use_chat = bool(tokenizer.chat_template)
        if not self.use_chat and no_chat_template == "error":
            raise RaftError(
                f"the tokenizer of {model_name!r} has no chat template, so the RAFT chat prompt cannot be "
                "rendered as serving would. Use an instruct/chat model, add a chat_template to its "
                "tokenizer_config.json, or set train.data.no_chat_template=completion to train on "
                "raft.prompt.completion_prompt (and serve through /v1/completions).")
        if label_mode == "auto":
            label_mode = "generation" if self.use_chat and has_generation_mask(tokenizer) else "prefix"
        if label_mode == "generation" and not (self.use_chat and has_generation_mask(tokenizer)):
            raise RaftError("train.data.label_mode=generation needs a chat template with {% generation %} "
                            "markers; use label_mode=prefix (or auto)")
        self.label_mode = label_mode
        self.eos = tokenizer.eos_token_id

    # -- one rendering ------------------------------------------------------------------------------
    def _encode(self, ex: Example, docs=None) -> tuple[list[int], list[int]]:
        tok = self.tok
        if not self.use_chat:
            p, a = ex.completion(docs)
            pid = tok(p, add_special_tokens=True)["input_ids"]
            aid = tok(a, add_special_tokens=False)["input_ids"] + ([self.eos] if self.eos is not None else [])
            return pid + aid, [-100] * len(pid) + aid
        msgs = ex.render(docs)
        if self.label_mode == "generation":
            out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
            return ids, [i if m else -100 for i, m in zip(ids, mask)]
        prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise RaftError(f"example {ex.id}: the chat template renders the conversation differently with "
                            "and without the answer, so answer tokens cannot be located; use a template with "
                            "{% generation %} markers (label_mode=generation)")
        pid = tok(prompt, add_special_tokens=False)["input_ids"]
        aid = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        return pid + aid, [-100] * len(pid) + aid

    def encode(self, ex: Example) -> tuple[list[int], list[int], bool] | None:
        """(input_ids, labels, trimmed) fitted to max_seq_len by trimming documents; None if impossible."""
        ids, labels = self._encode(ex)
        if len(ids) <= self.max_len:
            return ids, labels, False
        if ex.question is None or not ex.docs:
            return None
        docs = list(enumerate(ex.docs))
        # 1) drop distractors, last shown first (keeps the shown order of what remains)
        for pos in [i for i, _ in reversed(docs) if i not in ex.oracle_idx]:
            docs = [(i, d) for i, d in docs if i != pos]
            ids, labels = self._encode(ex, [d for _, d in docs])
            if len(ids) <= self.max_len:
                return ids, labels, True
        # 2) shorten what is left, proportionally to the overflow, a few rounds
        for _ in range(6):
            doc_chars = sum(len(d["text"]) for _, d in docs)
            over = len(ids) - self.max_len
            if doc_chars == 0:
                break
            total_chars = sum(len(m["content"]) for m in ex.render([d for _, d in docs]))
            doc_tokens = len(ids) * doc_chars / max(1, total_chars)  # tokens spent on documents (estimate)
            keep = max(0.0, 1.0 - 1.1 * over / max(1.0, doc_tokens))
            docs = [(i, {"title": d["title"], "text": d["text"][: int(len(d["text"]) * keep)]}) for i, d in docs]
            ids, labels = self._encode(ex, [d for _, d in docs])
            if len(ids) <= self.max_len:
                return ids, labels, True
        return None

    def encode_all(self, examples: list[Example], progress=None) -> tuple[list[dict], TokenStats]:
        stats, out = TokenStats(), []
        for ex in examples:
            got = self.encode(ex)
            if progress:
                progress()
            if got is None or all(x == -100 for x in got[1]):
                stats.dropped.append(ex.id)
                continue
            ids, labels, trimmed = got
            stats.kept += 1
            stats.trimmed += int(trimmed)
            stats.lengths.append(len(ids))
            stats.answer_lengths.append(sum(1 for x in labels if x != -100))
            out.append({"input_ids": ids, "labels": labels})
        return out, stats
