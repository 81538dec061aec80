"""`--questions FILE`: questions with gold answers and gold corpus doc ids, instead of generated ones.

Lines are {"id", "question", "answers": [...], "gold_ids": [...]} (the shape of ../shared/data/*/questions.jsonl);
`answers` is required (a non-empty list): the gold answers become the eval gold and the teacher's hint.
A gold doc id maps to that document's chunks; when a document has several chunks, the one(s) that contain
an answer, else the one with the most words in common with the question and answers, become the oracle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from raft.errors import RaftError
from raft.jsonl import iter_jsonl
from raft.prompt import normalize_for_match

_WORD = re.compile(r"\w+")


@dataclass
class GivenQuestion:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    gold_ids: list[str] = field(default_factory=list)


def load_questions(path: str | Path) -> list[GivenQuestion]:
    """Parse the file; errors name the file, the line and the field."""
    p = Path(path)
    if not p.is_file():
        raise RaftError(f"questions file {str(p)!r} does not exist")
    out, seen = [], set()
    for n, d in iter_jsonl(p):
        q = d.get("question")
        if not isinstance(q, str) or not q.strip():
            raise RaftError(f"{p}:{n}: field 'question' must be a non-empty string, got {q!r}")
        # gold answers are required: they are the eval gold, the teacher's hint and pick the oracle chunk;
        # without them the teacher's own answer would pass for the gold one
        answers = d.get("answers")
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) and str(a).strip()
                           for a in answers)):
            raise RaftError(f"{p}:{n}: field 'answers' must be a non-empty list of gold answer strings, got "
                            f"{answers!r}; e.g. \"answers\": [\"1641\"]")
        gold = d.get("gold_ids") or []
        if not isinstance(gold, list):
            raise RaftError(f"{p}:{n}: field 'gold_ids' must be a list of corpus document ids, got {gold!r}")
        qid = str(d.get("id", f"line{n}"))
        if qid in seen:
            raise RaftError(f"{p}:{n}: duplicate id {qid!r}")
        seen.add(qid)
        out.append(GivenQuestion(qid, q.strip(), [str(a) for a in answers], [str(g) for g in gold]))
    return out


def best_chunks(chunks: Sequence, question: str, answers: Sequence[str]) -> list:
    """The oracle chunk of one gold document (see module doc); all chunks when one is tied for best."""
    chunks = [c for c in chunks if c.text.strip()]
    if len(chunks) <= 1:
        return chunks
    norm_answers = [normalize_for_match(a) for a in answers if normalize_for_match(a)]
    with_answer = [c for c in chunks if any(a in normalize_for_match(c.text) for a in norm_answers)]
    pool = with_answer or chunks
    if len(pool) == 1:
        return pool
    qwords = set(_WORD.findall((question + " " + " ".join(answers)).lower()))
    return [max(pool, key=lambda c: len(qwords & set(_WORD.findall(c.text.lower()))))]
