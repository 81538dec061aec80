"""Quote-guarded decoding: between ##begin_quote## and ##end_quote## the model may only write text that is in
one of the documents of its prompt, read as the citation check reads quotes (case and runs of whitespace
aside, serving/citations.py and raft eval's quote validity). A quote a user is shown is then verbatim by
construction, not only when the model copies well: a 135M model trained for minutes splices two sentences
or paraphrases one in about a third of its quotes.

How: a transformers LogitsProcessor. While a row is inside an open quote, the guard looks at the row's
`top_n` best next tokens and keeps those whose text extends the quote to something still found in a
document (or starts or continues the closing marker); the others are masked. When none of them fits, it
takes the best tokens of the whole vocabulary that do: the quote follows the document rather than ending
in mid-sentence (a cut quote leaves a small model off the format it was trained on). Only when nothing fits
does it force the next token of ##end_quote##. Outside quotes, and for rows without documents, the scores
pass unchanged. The answer after the quotes is never constrained.

Costs one decode of the row's generated tokens per step and, inside quotes, `top_n` substring tests against
the row's documents (the whole vocabulary, tens of milliseconds, at the rare steps where none of those
fits): small next to a forward pass. Tokens that decode to part of a multi-byte character
cannot be matched, so a quote of non-ASCII text may end early.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from raft.prompt import BEGIN_QUOTE, END_QUOTE, normalize_for_match, prompt_documents

_ODD_SPACE = re.compile(r"[^\S \n\t]")  # whitespace the citation check would read as a space, but a reader would not
def open_quote(text: str) -> Optional[str]:
    """What follows the last ##begin_quote## of `text` when no ##end_quote## closed it; else None."""
    start = text.rfind(BEGIN_QUOTE)
    if start < 0 or text.rfind(END_QUOTE) > start:
        return None
    return text[start + len(BEGIN_QUOTE):]


def piece_table(tokenizer) -> list[str]:
    """The text each token id adds when it follows other text (a lone SentencePiece token would lose its
    leading space, so each is decoded after an anchor token and the anchor's text removed); cached."""
    cached = getattr(tokenizer, "_raft_quote_pieces", None)
    if cached is not None:
        return cached
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
    head = tokenizer.decode([anchor])
    table = []
    for t in range(len(tokenizer)):
        s = tokenizer.decode([anchor, t], skip_special_tokens=True)
        table.append(s[len(head):] if s.startswith(head) else s)
    try:
        tokenizer._raft_quote_pieces = table
    except AttributeError:  # a tokenizer that takes no new attributes: rebuilt per batch
        pass
    return table


class QuoteGuard:
    """LogitsProcessor for one `generate` call over a left-padded batch (see the module docstring).

    `prompts`: each row's rendered prompt text, or None for a row the guard leaves alone; `prompt_len`: the
    padded prompt length (generated tokens start there in every row)."""

    def __init__(self, tokenizer, prompts: Sequence[Optional[str]], prompt_len: int, top_n: int = 64):
        self.tokenizer, self.prompt_len, self.top_n = tokenizer, prompt_len, top_n
        self.pieces = piece_table(tokenizer)
        self.docs = [None if p is None else [normalize_for_match(d) for d in prompt_documents(p)] or None
                     for p in prompts]
        # a prompt may end inside an open quote (a completion prompt that starts the quote for the model)
        self.prefix = [None if p is None else open_quote(p) for p in prompts]
        self.masked_steps = 0  # steps at which a row's best token was replaced (for logs and tests)
        self.forced = 0  # closing-marker tokens forced because no candidate fitted

    def quote_so_far(self, row: int, generated: str) -> Optional[str]:
        if BEGIN_QUOTE in generated or END_QUOTE in generated:
            return open_quote(generated)
        prefix = self.prefix[row]
        return None if prefix is None else prefix + generated

    def fits(self, text: str, docs: list[str]) -> bool:
        """`text` (a quote being written) is in a document, up to a closing marker it may be starting."""
        if not text:
            return False
        h = text.find("#")
        body, tail = (text, "") if h < 0 else (text[:h], text[h:])
        if tail and not (END_QUOTE.startswith(tail) or tail.startswith(END_QUOTE)):
            return False
        body = normalize_for_match(body)
        if tail.startswith(END_QUOTE) and not body:
            return False  # an empty quote says nothing
        return not body or any(body in d for d in docs)

    def fitting(self, quote: str, docs: list[str], order: list[int], most: int | None = None) -> list[int]:
        """The tokens of `order` (best first) that keep `quote` in a document, at most `most` of them. A token
        that adds no text (end of sequence, padding) would end the answer inside the quote, and one of control
        whitespace (vertical tab, form feed...) would pass the check as a space: never one of those."""
        out = []
        for t in order:
            piece = self.pieces[t] if t < len(self.pieces) else ""
            if piece and not _ODD_SPACE.search(piece) and self.fits(quote + piece, docs):
                out.append(t)
                if most is not None and len(out) == most:
                    break
        return out

    def closing_token(self, quote: str) -> int:
        """The next token of ##end_quote## after `quote` (which may already hold its first characters)."""
        h = quote.find("#")
        rest = END_QUOTE
        if h >= 0 and END_QUOTE.startswith(quote[h:]):
            rest = END_QUOTE[len(quote) - h:] or END_QUOTE
        return self.tokenizer.encode(rest, add_special_tokens=False)[0]

    def __call__(self, input_ids, scores):
        import torch

        for row, docs in enumerate(self.docs):
            if docs is None:
                continue
            generated = self.tokenizer.decode(input_ids[row, self.prompt_len:].tolist(), skip_special_tokens=True)
            quote = self.quote_so_far(row, generated)
            if quote is None:
                continue
            top = torch.topk(scores[row], min(self.top_n, scores.shape[-1])).indices.tolist()
            allowed = self.fitting(quote, docs, top)
            if not allowed:  # the model's best guesses all leave the document: follow the document instead
                allowed = self.fitting(quote, docs, torch.argsort(scores[row], descending=True).tolist(), 4)
            if not allowed:
                allowed = [self.closing_token(quote)]
                self.forced += 1
            if allowed[0] != top[0]:
                self.masked_steps += 1
            keep = scores[row, allowed].clone()
            scores[row] = float("-inf")
            scores[row, allowed] = keep
        return scores
