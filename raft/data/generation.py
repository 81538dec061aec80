"""Teacher prompts (question and answer generation) and the checks applied to what a teacher returns.

These are the prompts the *teacher* reads while the dataset is built; the prompt the *student* is
trained on is rendered by raft.prompt only.
"""

from __future__ import annotations

import re
from typing import Sequence

from raft.data.mixing import WholeWords
from raft.eval.metrics import normalize_answer, normalize_api_call
from raft.prompt import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, extract_answer, extract_quotes, normalize_for_match, quote_in

QUESTION_SYSTEM = {
    "general": (
        "You are a synthetic question generator. Given a chunk of text about some topic(s), write {n} "
        "questions a user could ask that are answered by information in the chunk. For example, if the "
        "chunk were a Wikipedia paragraph about the United States, a question could be 'How many states are "
        "in the United States?'. Each question must be answerable in a few words from the chunk alone. "
        "Write one question per line, no numbering, nothing else."
    ),
    "api": (
        "You are a synthetic instruction generator. Given an API's documentation (often a JSON object), "
        "write {n} instructions a user could give that are fulfilled by calling this API, for example "
        "'I want to classify the objects in my photo.' Do not name the API or its function in the "
        "instruction. Write one instruction per line, no numbering, nothing else."
    ),
}

ANSWER_INSTRUCTIONS = (
    "Answer the question using the information in the context above. Pay attention to these rules:\n"
    "- First give step-by-step reasoning on how to answer the question.\n"
    f"- When you copy a sentence from the context, put it between {BEGIN_QUOTE} and {END_QUOTE}; copy it "
    "exactly. Anything outside those markers is your own words.\n"
    f"- End with the final answer in the form {ANSWER_TAG} $answer; the answer must be succinct. You MUST "
    f"begin your final answer with the tag \"{ANSWER_TAG}\"."
)

API_ANSWER_INSTRUCTIONS = (
    "Answer the instruction with the API call from the documentation above that fulfils it.\n"
    "- First explain step by step why this API fits.\n"
    f"- Quote the relevant parts of the documentation exactly between {BEGIN_QUOTE} and {END_QUOTE}.\n"
    f"- End with the API call alone in the form {ANSWER_TAG} $api_call. You MUST begin it with "
    f"\"{ANSWER_TAG}\"."
)


def question_messages(chunk_text: str, n: int, mode: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": QUESTION_SYSTEM[mode].format(n=n)},
            {"role": "user", "content": chunk_text}]


def answer_messages(question: str, oracle_texts: Sequence[str], mode: str,
                    hint: str | None = None) -> list[dict[str, str]]:
    context = "\n\n".join(oracle_texts)
    rules = API_ANSWER_INSTRUCTIONS if mode == "api" else ANSWER_INSTRUCTIONS
    hint_line = f"\nThe correct answer is: {hint}. Explain how the context supports it.\n" if hint else ""
    return [{"role": "system", "content": "You are a helpful assistant that answers from the given context."},
            {"role": "user", "content": f"Question: {question}\nContext: {context}\n{hint_line}\n{rules}"}]


_NUMBERING = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)]|Q\d*[.:)]|Question\s*\d*\s*[.:)])\s*",
                        re.IGNORECASE)
_PREAMBLE = re.compile(r"^(here are|sure[,!.]|certainly|below are|the following)", re.IGNORECASE)


def parse_questions(text: str, n: int) -> list[str]:
    """Questions from a teacher's free text: numbering/bullets/quotes stripped, preambles, empties and
    (case-insensitive) duplicates dropped, at most `n` kept."""
    out, seen = [], set()
    for raw in (text or "").splitlines():
        line = raw.strip()
        for _ in range(2):  # "1. - Q: ..." style double prefixes
            line = _NUMBERING.sub("", line).strip()
        line = line.strip('"\u201c\u201d\'` ').strip()
        if len(line) < 8 or _PREAMBLE.match(line) or line.endswith(":"):
            continue
        if not re.search(r"[A-Za-z]", line):
            continue
        key = re.sub(r"\W+", " ", line.lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        out.append(line)
        if len(out) == n:
            break
    return out


_REFUSAL = re.compile(r"\b(i can(?:not|'t)|i am unable|i'm unable|i'm sorry|as an ai|i apologi[sz]e)\b",
                      re.IGNORECASE)


# Answers no sentence can hold: a yes/no question is answered by comparing what the quotes say.
_YES_NO = frozenset({"yes", "no"})


def answer_in_text(answer: str, text: str) -> bool:
    """True when `text` holds `answer` as whole words, both normalised as the eval normalises answers
    (raft.eval.metrics.normalize_answer: case, ASCII punctuation, articles and whitespace ignored), so
    "The Eiffel Tower." is in "the eiffel tower, built in 1889" and "1844" is in "(1844–1846)", but
    "art" is not in "party"."""
    a = normalize_answer(answer)
    return bool(a) and WholeWords(a).search(normalize_answer(text))


def quote_supports_answer(quotes: Sequence[str], answer: str, mode: str = "general") -> bool:
    """True when at least one quote contains the final answer, so the quoted evidence leads to it.

    - general: some quote holds the answer as whole words (see answer_in_text); an answer that normalises
      to "yes" or "no" is exempt, since no sentence holds it (its quotes must still be in the oracle).
    - api: some quote holds the called function's dotted name (`torch.hub.load` of
      `torch.hub.load(repo_or_dir=...)`, taken with the eval's normalize_api_call), case-insensitive; an
      answer with no parseable call is checked as in general mode.
    """
    if mode == "api":
        call = normalize_api_call(answer)
        name = call.split("(", 1)[0] if "(" in call else ""
        if name:
            pattern = WholeWords(normalize_for_match(name))
            return any(pattern.search(normalize_for_match(q)) for q in quotes)
    if normalize_answer(answer) in _YES_NO:
        return True
    return any(answer_in_text(answer, q) for q in quotes)


def check_answer(text: str, oracle_texts: Sequence[str], finish_reason: str | None = None,
                 mode: str = "general") -> tuple[str | None, dict]:
    """(drop reason or None, details) for one teacher answer.

    Kept answers have an `<ANSWER>:` tag with a non-empty answer, at least one quote, every quote found
    verbatim (case/whitespace-insensitive) in one of the oracle chunks, and at least one quote that holds
    the final answer (quote_supports_answer): a verified quote of an unrelated sentence teaches nothing.
    """
    text = (text or "").strip()
    quotes = extract_quotes(text)
    info = {"quotes": len(quotes), "verified": 0}
    if not text:
        return "empty", info
    if finish_reason == "length":
        return "truncated", info
    if ANSWER_TAG not in text:
        return ("refused" if _REFUSAL.search(text) else "no_answer_tag"), info
    if not extract_answer(text):
        return "empty_answer", info
    if not quotes:
        return "no_quotes", info
    info["verified"] = sum(any(quote_in(q, t) for t in oracle_texts) for q in quotes)
    if info["verified"] < len(quotes):
        return "quote_not_in_oracle", info
    if not quote_supports_answer(quotes, extract_answer(text), mode):
        return "quote_not_supporting_answer", info
    return None, info
