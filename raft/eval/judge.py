"""LLM-as-judge: any OpenAI-compatible model grades an answer 1-5 against the gold answers."""

from __future__ import annotations

from typing import Sequence

from raft.eval.client import Endpoint
from raft.eval.metrics import parse_judge_score

JUDGE_SYSTEM = (
    "You grade answers to questions. Compare the candidate answer with the reference answer(s) and rate "
    "its correctness and completeness on a scale of 1 to 5: 5 = fully correct, 4 = correct with minor "
    "omissions, 3 = partly correct, 2 = mostly wrong, 1 = wrong or no answer. "
    "Reply with one line of the form `Score: N` followed by a one-sentence reason."
)


def judge_messages(question: str, answers: Sequence[str], prediction: str) -> list[dict[str, str]]:
    """The judge's chat messages for one graded answer."""
    refs = "\n".join(f"- {a}" for a in answers)
    user = (f"Question: {question}\n\nReference answer(s):\n{refs}\n\n"
            f"Candidate answer: {prediction or '(empty)'}\n\nScore (1-5):")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


async def judge_score(judge: Endpoint, question: str, answers: Sequence[str], prediction: str,
                      max_tokens: int = 256) -> tuple[float | None, str]:
    """(score or None when the reply has no 1-5 score or the call failed, raw reply or error)."""
    reply = await judge.chat(judge_messages(question, answers, prediction), max_tokens=max_tokens)
    if reply.error:
        return None, f"error: {reply.error}"
    return parse_judge_score(reply.text), reply.text
