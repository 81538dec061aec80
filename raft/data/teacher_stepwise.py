"""`teacher.strategy=stepwise`: a teacher for small models (SmolLM2-135M and the like), which cannot write a
whole quoted chain of thought in one go. Asked for one (the `cot` strategy), SmolLM2-135M copied the passage
instead of asking, and never ended an answer with `<ANSWER>:`. So the model is asked only for what it can
do, one short thing per call, from few-shot examples, and the teacher checks and assembles the rest:

- questions: one call per question, each about one sentence of the chunk (a seeded pick; a retry asks about
  others). A reply is kept only when it is a real question about that sentence (teacher_filters.
  question_problem: ends in '?', starts like a question, copies no long run of the passage, no vague
  pronoun, shares a content word with the sentence);
- answers: the two oracle sentences that share most words with the question are shown, and the model gives
  the answer as a short phrase. The phrase is cut down to the words the question does not already hold, and
  must appear verbatim in one of those sentences; that sentence becomes the quote, and the teacher writes
  `The context states: ##begin_quote##<sentence>##end_quote##\\n<ANSWER>: <phrase>`. So every kept quote is
  verbatim by construction and holds the answer; what the model decides is the question and the answer span.
  A reply that fails is dropped for this attempt with its own reason (`teacher_answer_<why>`), and the
  builder asks again up to build.max_attempts.
- with a gold answer (a questions file's hint) no model call is needed: the quote is the oracle sentence
  that holds the answer (or shares most words with the question), the answer is the gold answer.

`mode=api` has no stepwise prompts: there the free prompts of raft/data/generation.py are used as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Sequence

from raft.data.teacher_filters import (clean_question, content_stems, focus_sentences, pick_answer,
                                       question_problem, rank_sentences)
from raft.data.teachers import ChatTeacher, Completion, TeacherRequestError, sentences
from raft.prompt import cot_answer, quote_in

QUESTION_SYSTEM = "Write one question that the passage answers in a few words."
QUESTION_SHOTS = [
    ("The Eiffel Tower in Paris was completed in 1889 for the World's Fair.", "When was the Eiffel Tower completed?"),
    ("Honey bees live in colonies of up to 60,000 workers, ruled by a single queen.",
     "How many workers can a honey bee colony have?"),
    ("The Amazon river flows through Brazil and is home to the pink river dolphin.",
     "Which dolphin lives in the Amazon river?"),
]
ANSWER_SYSTEM = "Answer with the shortest phrase from the passage. Do not repeat the question."
ANSWER_SHOTS = [
    ("The Eiffel Tower in Paris was completed in 1889. It is 330 metres tall.",
     "What is the height of the Eiffel Tower?", "330 metres"),
    ("The queen is the only bee in the colony that lays eggs.", "Which bee lays the eggs?", "the queen"),
    ("The Amazon river flows through Brazil and is home to the pink river dolphin.",
     "What animal lives in the Amazon river?", "the pink river dolphin"),
    ("Marie Curie won the Nobel Prize in Physics in 1903.", "When did Marie Curie win the Nobel Prize in Physics?",
     "1903"),
]
# Replies are one short line: these caps keep a rambling reply from costing seconds of CPU per token.
QUESTION_MAX_TOKENS = 40
ANSWER_MAX_TOKENS = 24
REASONING = "The context states:"
# The teacher cache stores replies after these filters ran: bump when a check in teacher_filters.py changes
# what it keeps, so that a rebuild asks again instead of reusing what the old checks let through.
FILTER_VERSION = 1
PROMPT_HASH = hashlib.sha256(json.dumps([QUESTION_SYSTEM, QUESTION_SHOTS, ANSWER_SYSTEM, ANSWER_SHOTS,
                                         QUESTION_MAX_TOKENS, ANSWER_MAX_TOKENS, REASONING, FILTER_VERSION]
                                        ).encode()).hexdigest()[:12]


class TeacherFilterError(TeacherRequestError):
    """A reply the stepwise teacher rejected (`reason` says why); the builder counts it and asks again."""


def question_messages(sentence: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": QUESTION_SYSTEM}]
    for passage, q in QUESTION_SHOTS:
        msgs += [{"role": "user", "content": f"Passage: {passage}"}, {"role": "assistant", "content": q}]
    return msgs + [{"role": "user", "content": f"Passage: {sentence}"}]


def answer_messages(question: str, passage_sentences: Sequence[str]) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": ANSWER_SYSTEM}]
    for passage, q, a in ANSWER_SHOTS:
        msgs += [{"role": "user", "content": f"Passage: {passage}\nQuestion: {q}"},
                 {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": f"Passage: {' '.join(passage_sentences)}\nQuestion: {question}"}]


def hinted_quote(question: str, texts: Sequence[str], hint: str) -> str | None:
    """The oracle sentence to quote for a known answer: one holding it (most words shared with the question
    first), else the sentence sharing most words with the question and the answer."""
    cands = [s for t in texts for s in sentences(t)]
    if not cands:
        return None
    with_hint = [s for s in cands if quote_in(hint, s)]
    q = content_stems(question + " " + hint)
    return max(with_hint or cands, key=lambda s: len(q & content_stems(s)))


class StepwiseTeacher(ChatTeacher):
    """Wraps a model teacher (OpenAI-compatible or vLLM offline): same endpoint, stats and name, stepwise
    prompts (see the module docstring)."""

    def __init__(self, inner: ChatTeacher):
        super().__init__(inner.cfg)
        self.inner = inner
        self.kind = inner.kind
        self.name = inner.name
        self.stats = inner.stats

    def signature(self) -> dict[str, Any]:
        return self.inner.signature() | {"strategy": "stepwise", "stepwise_prompts": PROMPT_HASH}

    async def check(self) -> list[str]:
        return await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def complete(self, messages, max_tokens: int, seed: int | None) -> Completion:
        return await self.inner.complete(messages, max_tokens, seed)

    def _limit(self, cap: int) -> int:
        return min(cap, self.cfg.max_tokens)

    async def questions(self, chunk_text: str, n: int, mode: str, seed: int | None = None) -> Completion:
        if mode != "general":
            return await super().questions(chunk_text, n, mode, seed)
        base = seed or 0
        focus = focus_sentences(chunk_text, n, base)
        if not focus:
            self.stats.filtered["question_no_usable_sentence"] += 1
            return Completion("", "stop")
        replies = await asyncio.gather(*(self.complete(question_messages(s), self._limit(QUESTION_MAX_TOKENS),
                                                       base + i) for i, s in enumerate(focus)),
                                       return_exceptions=True)
        kept, errors = [], []
        out = Completion("", "stop")
        for s, r in zip(focus, replies):
            if isinstance(r, TeacherRequestError):
                errors.append(r)
                continue
            if isinstance(r, BaseException):
                raise r
            out.prompt_tokens += r.prompt_tokens
            out.completion_tokens += r.completion_tokens
            q = clean_question(r.text)
            why = question_problem(q, s)
            if why:
                self.stats.filtered[f"question_{why}"] += 1
            elif q.lower() not in {k.lower() for k in kept}:
                kept.append(q)
        if errors and not kept:
            raise errors[0]
        out.text = "\n".join(kept)
        return out

    async def answer(self, question: str, oracle_texts: Sequence[str], mode: str, hint: str | None = None,
                     seed: int | None = None) -> Completion:
        if mode != "general":
            return await super().answer(question, oracle_texts, mode, hint, seed)
        if hint:
            quote = hinted_quote(question, oracle_texts, hint)
            if quote is None:
                self.stats.filtered["answer_no_sentences"] += 1
                raise TeacherFilterError("answer_no_sentences")
            return Completion(cot_answer(REASONING, [quote], hint), "stop")
        shown = rank_sentences(question, oracle_texts, top=2)
        if not shown:
            self.stats.filtered["answer_no_sentences"] += 1
            raise TeacherFilterError("answer_no_sentences")
        c = await self.complete(answer_messages(question, shown), self._limit(ANSWER_MAX_TOKENS), seed)
        picked = pick_answer(c.text, question, shown)
        if isinstance(picked, str):
            self.stats.filtered[f"answer_{picked}"] += 1
            raise TeacherFilterError(f"answer_{picked}", repr(c.text[:80]))
        answer, sentence = picked
        return Completion(cot_answer(REASONING, [sentence], answer), "stop", c.prompt_tokens, c.completion_tokens)
