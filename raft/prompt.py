"""The one RAFT prompt. Dataset export, training, evaluation and serving all render documents and a
question into messages here, so what a served model reads is byte-for-byte what it was trained on.

Changing anything that alters the rendered text must bump PROMPT_VERSION: adapters record the version
they were trained with (raft_meta.json) and serving warns on a mismatch.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

PROMPT_VERSION = "raft-prompt-v1"

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_TAG = "<ANSWER>:"

SYSTEM_PROMPT = (
    "Answer the question using the documents provided; some of them may be irrelevant. "
    f"Reason step by step first. When you use a sentence from a document, copy it exactly between "
    f"{BEGIN_QUOTE} and {END_QUOTE}. End with the final answer, short, after the tag {ANSWER_TAG}"
)


def _field(doc: Any, name: str) -> str:
    if isinstance(doc, Mapping):
        value = doc.get(name, "")
    else:
        value = getattr(doc, name, "")
    return "" if value is None else str(value)


def render_document(doc: Any) -> str:
    """One document (a mapping or an object with `title` and `text`) in the gorilla-compatible tags."""
    title, text = _field(doc, "title").strip(), _field(doc, "text").strip()
    head = f"Title: {title}\n" if title else ""
    return f"<DOCUMENT>\n{head}{text}\n</DOCUMENT>\n"


_DOCUMENT_RE = re.compile(r"<DOCUMENT>\n(?:Title: [^\n]*\n)?(.*?)\n</DOCUMENT>", re.DOTALL)


def prompt_documents(prompt: str) -> list[str]:
    """The texts of the documents `render_document` put into `prompt`, in order (titles left out)."""
    return _DOCUMENT_RE.findall(prompt or "")


def render_user(question: str, docs: Iterable[Any]) -> str:
    """The user turn: the documents in shown order, then the question (gorilla's `instruction`)."""
    return "".join(render_document(d) for d in docs) + f"Question: {question.strip()}"


def build_messages(question: str, docs: Sequence[Any], answer: str | None = None,
                   system: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages for one example; with `answer`, the assistant turn that training learns."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": render_user(question, docs)})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def augment_messages(messages: Sequence[Mapping[str, Any]], docs: Sequence[Any]) -> list[dict[str, Any]]:
    """Serving: put retrieved docs into a client's conversation exactly as `build_messages` would.

    The last user turn becomes the question; earlier turns are kept; the RAFT system prompt is added
    unless the client sent its own system message.
    """
    out = [dict(m) for m in messages]
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("the conversation has no user message to answer")
    question = message_text(out[last_user])
    out[last_user] = {"role": "user", "content": render_user(question, docs)}
    if not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    return out


def message_text(message: Mapping[str, Any]) -> str:
    """Text of a message whose content is a string or OpenAI content parts."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def completion_prompt(question: str, docs: Sequence[Any]) -> str:
    """Plain-text prompt for completion-style training and `/v1/completions` (no chat template)."""
    return f"{SYSTEM_PROMPT}\n\n{render_user(question, docs)}\nAnswer:"


_QUOTE_RE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
_WS_RE = re.compile(r"\s+")


def extract_quotes(text: str) -> list[str]:
    """The quoted spans of an answer, stripped, empties dropped."""
    return [q.strip() for q in _QUOTE_RE.findall(text or "") if q.strip()]


def extract_answer(text: str) -> str:
    """What follows the last `<ANSWER>:` tag; the whole text, stripped, if the tag is missing."""
    text = text or ""
    idx = text.rfind(ANSWER_TAG)
    return (text[idx + len(ANSWER_TAG):] if idx >= 0 else text).strip()


def normalize_for_match(text: str) -> str:
    """Whitespace- and case-insensitive form used to check that a quote appears in a document."""
    return _WS_RE.sub(" ", (text or "").lower()).strip()


def quote_in(quote: str, document_text: str) -> bool:
    """True when `quote` appears in `document_text`, ignoring case and whitespace differences."""
    q = normalize_for_match(quote)
    return bool(q) and q in normalize_for_match(document_text)


def cot_answer(reasoning: str, quotes: Sequence[str], answer: str) -> str:
    """Assemble a chain-of-thought answer in the RAFT format (used by the extractive teacher)."""
    quoted = " ".join(f"{BEGIN_QUOTE}{q}{END_QUOTE}" for q in quotes)
    body = f"{reasoning.strip()} {quoted}".strip()
    return f"{body}\n{ANSWER_TAG} {answer.strip()}"


def docs_from_record(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The shown documents of a RAFT record (gorilla `context` layout), in shown order."""
    ctx = record.get("context") or {}
    titles = (ctx.get("title") or [[]])[0]
    texts = (ctx.get("sentences") or [[]])[0]
    titles = list(titles) + [""] * (len(texts) - len(titles))
    return [{"title": t if t != "placeholder_title" else "", "text": x} for t, x in zip(titles, texts)]


def messages_from_record(record: Mapping[str, Any], with_answer: bool = True) -> list[dict[str, str]]:
    """Training/eval messages of a RAFT record; identical to what serving sends for the same documents."""
    answer = record.get("cot_answer") if with_answer else None
    return build_messages(record["question"], docs_from_record(record), answer)
