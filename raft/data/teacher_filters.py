"""Pure text checks of the stepwise teacher (raft/data/teacher_stepwise.py): which sentences a question is
asked about, whether a small model's question is a real question about its passage, which sentences an answer
is looked for in, and how a chatty answer ("the length of the bridge is 180 metres") is cut down to the span
that answers ("180 metres").

No model here: every function is deterministic, so the teacher's filters are testable without a server.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from raft.data.teachers import sentences

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
STOPWORDS = frozenset("""
a an the of in on at to for from by with and or but as is are was were be been being it its this that these those
what which who whom whose when where why how do does did has have had can could will would should may might
there their they them he she his her i you we our your into about than then so not no yes also very
""".split())
_PRONOUN_START = re.compile(r"^(it|its|they|their|them|he|his|she|her|this|these|those|such)\b", re.IGNORECASE)
_PRONOUN_ANY = re.compile(r"\b(it|they|he|she|this|these|those)\b", re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^(?:(?:in|on|at|by|for|from|to|during|after|before|since|of|with)\s+)?"
    r"(what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|has|have|had)\b",
    re.IGNORECASE)
MAX_COPIED_RUN = 8  # a question repeating 8+ consecutive words of its passage is a copy, not a question
MAX_ANSWER_WORDS = 10


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def _stem(w: str) -> str:
    # crude, but enough to match "open"/"opened", "length"/"lengths" between a question and a sentence
    return w[:5] if len(w) > 5 else w


def content_stems(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 2}


def _in_stems(w: str, stems: set[str]) -> bool:
    """`w` is one of `stems`, or shares a 4+ letter prefix-stem with one ("open" / "opened")."""
    st = _stem(w)
    return st in stems or any(len(s) >= 4 and (st.startswith(s) or s.startswith(st)) and len(st) >= 4
                              for s in stems)


def focus_sentences(chunk_text: str, n: int, seed: int) -> list[str]:
    """Up to `n` distinct sentences of a chunk to ask one question each about, in a seeded order (a retry
    with another seed asks about other sentences first). Sentences that open with a pronoun ("It crosses
    the river...") are skipped: shown alone, they make questions about "it"."""
    cands = [s for s in sentences(chunk_text) if not _PRONOUN_START.match(s)]
    random.Random(seed).shuffle(cands)
    return cands[:n]


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def clean_question(raw: str) -> str:
    """The first question in a model's reply: first non-empty line, cut after its first '?', list marks and
    quotes stripped."""
    for line in (raw or "").splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]+|\d{1,2}[.):]|Q(?:uestion)?\s*\d*\s*[:.)])\s*", "", line).strip()
        line = line.strip('"\u201c\u201d\'` ')
        if line:
            if "?" in line:
                line = line[:line.index("?") + 1]
            return line
    return ""


def question_problem(question: str, passage: str) -> str | None:
    """Why `question` is not a usable question about `passage` (a short label), or None when it is.

    The labels are what the build summary counts under teacher_calls.filtered (prefixed `question_`)."""
    q = question.strip()
    if not q:
        return "empty"
    if not q.endswith("?"):
        return "not_a_question"
    if not _QUESTION_START.match(q):
        return "not_a_question"
    qw = words(q)
    if not 4 <= len(qw) <= 30:
        return "bad_length"
    if _longest_common_run(qw, words(passage)) >= MAX_COPIED_RUN:
        return "copies_passage"
    if _PRONOUN_ANY.search(q):
        return "vague_pronoun"
    if not content_stems(q) & content_stems(passage):
        return "off_passage"
    return None


def rank_sentences(question: str, texts: Sequence[str], top: int = 2) -> list[str]:
    """The `top` sentences of the oracle text(s) that share most content words with the question, best first
    (ties: earlier sentence first)."""
    q = content_stems(question)
    cands = [s for t in texts for s in sentences(t)]
    scored = sorted(enumerate(cands), key=lambda p: (-len(q & content_stems(p[1])), p[0]))
    return [s for _, s in scored[:top]]


def _find(span: str, sentence: str) -> str | None:
    """`span` as it is written in `sentence` (case- and whitespace-insensitive match), or None."""
    pat = r"\s+".join(re.escape(w) for w in span.split())
    m = re.search(rf"(?<![A-Za-z0-9]){pat}(?![A-Za-z0-9])", sentence, re.IGNORECASE) if pat else None
    return m.group(0) if m else None


_EDGE = STOPWORDS | {"in", "on", "at", "about", "around", "called", "named", "known"}


def _trim(tokens: list[str]) -> list[str]:
    while tokens and tokens[0].lower() in _EDGE:
        tokens = tokens[1:]
    while tokens and tokens[-1].lower() in _EDGE:
        tokens = tokens[:-1]
    return tokens


def answer_candidates(raw: str, question: str) -> list[str]:
    """Spans of a model's short answer to try, best first: the runs of its words that the question does not
    already contain, longest first ("the length of the bridge is 180 metres" asked "What is the length of the
    bridge?" -> "180 metres"), then the reply as written."""
    text = (raw or "").strip().splitlines()[0].strip() if (raw or "").strip() else ""
    text = re.sub(r"^(?:answer|a)\s*:\s*", "", text, flags=re.IGNORECASE).strip().strip('"\u201c\u201d`').strip()
    text = text.rstrip(".!;,").strip()
    out: list[str] = []
    qs = content_stems(question)
    toks = text.split()
    runs, cur = [], []
    for t in toks:
        w = words(t)
        if w and all(_in_stems(x, qs) for x in w if x not in STOPWORDS) and any(x not in STOPWORDS for x in w):
            runs.append(cur)
            cur = []
        else:
            cur.append(t)
    runs.append(cur)
    for run in sorted((_trim(r) for r in runs), key=len, reverse=True):
        span = " ".join(run).strip(".,;:!?\"'()")
        if span and span not in out:
            out.append(span)
    if text and text not in out:  # the reply as written comes last: it may restate the question
        out.append(text)
    return out


def answer_problem(span: str, question: str) -> str | None:
    """Why a candidate answer span is not a usable answer to `question`, or None."""
    w = words(span)
    if not w:
        return "empty"
    if len(w) > MAX_ANSWER_WORDS:
        return "too_long"
    content = [x for x in w if x not in STOPWORDS]
    if not content:
        return "only_stopwords"
    qs = content_stems(question)
    if all(_in_stems(x, qs) for x in content):
        return "repeats_question"
    return None


def pick_answer(raw: str, question: str, sentences_: Sequence[str]) -> tuple[str, str] | str:
    """(answer as written in the sentence, that sentence) for the first usable candidate span of the model's
    reply that one of `sentences_` (best first) contains verbatim; else the label of why none was usable."""
    why = "empty"
    for span in answer_candidates(raw, question):
        why = answer_problem(span, question) or "not_in_passage"
        if why != "not_in_passage":
            continue
        for s in sentences_:
            found = _find(span, s)
            if found:
                return found, s
    return why
