"""Quote-guarded decoding in raft's batched engine, on the random tiny Llama: a random model writes nonsense, so a
quote it writes under the guard is in the prompt's document only because the guard kept it there."""

from __future__ import annotations

import pytest

from raft.prompt import BEGIN_QUOTE, END_QUOTE, build_messages, completion_prompt, normalize_for_match
from serving.batched.generator import BatchGenerator, GenRequest
from raft.prompt import prompt_documents
from serving.batched.quote_guard import QuoteGuard, open_quote

DOC = ("The Lune River flows for 38 kilometres across Marenta before reaching the sea at Portivel harbour. "
       "Fishing boats leave the harbour every morning before dawn.")
OTHER = "The Sarn Light is 41 metres tall."


@pytest.fixture(scope="module")
def gen(tiny_model_dir) -> BatchGenerator:
    return BatchGenerator(tiny_model_dir)


def test_documents_are_read_from_the_rendered_prompt_without_titles():
    docs = [{"title": "Rivers", "text": DOC}, {"title": "", "text": OTHER}]
    assert prompt_documents(completion_prompt("How long is the Lune?", docs)) == [DOC, OTHER]
    user = build_messages("How long is the Lune?", docs)[-1]["content"]
    assert prompt_documents("<|im_start|>user\n" + user + "<|im_end|>") == [DOC, OTHER]
    assert prompt_documents("no documents here") == []


@pytest.mark.parametrize(("quote", "ok"), [
    ("The Lune River flows", True),
    ("the lune  RIVER\nflows for 38", True),  # case and runs of whitespace aside, as the citation check reads
    (" Fishing boats leave the harb", True),  # a word being written
    ("The Lune River is 180 metres long", False),  # a paraphrase
    ("before dawn. The Sarn Light", False),  # spliced across two documents
    ("The Lune River flows##", True),  # the closing marker, starting
    ("The Lune River flows##end_quote##", True),
    ("The Lune River flows##begin", False),
    ("##end_quote##", False),  # an empty quote
    ("", False),
])
def test_fits(tiny_model_dir, quote, ok):
    from transformers import AutoTokenizer

    guard = QuoteGuard(AutoTokenizer.from_pretrained(tiny_model_dir), [completion_prompt("q", [{"text": DOC},
                                                                                              {"text": OTHER}])], 0)
    assert guard.fits(quote, guard.docs[0]) is ok


def test_open_quote():
    assert open_quote(f"x {BEGIN_QUOTE}The Lune") == "The Lune"
    assert open_quote(f"{BEGIN_QUOTE}a{END_QUOTE} b") is None
    assert open_quote("no quote") is None


def test_the_guard_replaces_a_best_token_that_leaves_the_document(gen):
    import torch

    tok = gen.tokenizer
    prompt = completion_prompt("How long is the Lune River?", [{"text": DOC}]) + f" {BEGIN_QUOTE}The Lune River"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    guard = QuoteGuard(tok, [prompt], ids.shape[1])
    pieces = guard.pieces
    good = next(t for t, p in enumerate(pieces) if p == " flows")
    bad = next(t for t, p in enumerate(pieces) if p == " is")
    scores = torch.zeros(1, len(pieces))
    scores[0, bad], scores[0, good] = 5.0, 1.0
    out = guard(ids, scores.clone())
    assert int(out[0].argmax()) == good and guard.masked_steps == 1
    assert out[0, bad] == float("-inf")
    # when none of the model's best guesses fits, the quote follows the document instead of ending
    scores = torch.zeros(1, len(pieces))
    scores[0, [t for t, p in enumerate(pieces) if "#" in p]] = -10.0
    scores[0, good] = 1.0
    off = [t for t, p in enumerate(pieces) if p.strip() and not guard.fits("The Lune River" + p, guard.docs[0])]
    scores[0, off[:64]] = 5.0  # the model's 64 best guesses all leave the document
    out = guard(ids, scores.clone())
    assert int(out[0].argmax()) == good and guard.forced == 0
    # a row without the guard keeps its scores
    assert torch.equal(QuoteGuard(tok, [None], ids.shape[1])(ids, scores.clone()), scores)


def test_generation_under_the_guard_quotes_the_document_verbatim(gen):
    prompt = completion_prompt("How long is the Lune River?", [{"text": DOC}, {"text": OTHER}]) + f" {BEGIN_QUOTE}"
    free, guarded = gen.generate([GenRequest(prompt=prompt, max_tokens=24),
                                  GenRequest(prompt=prompt, max_tokens=24, quote_guard=True)])
    quote = normalize_for_match(guarded.text.split("#", 1)[0])
    assert quote and (quote in normalize_for_match(DOC) or quote in normalize_for_match(OTHER)), guarded.text
    # the same request without the guard (same batch) writes the random model's nonsense
    assert normalize_for_match(free.text.split("#", 1)[0]) not in normalize_for_match(DOC + " " + OTHER)
    # the guard changes nothing where the prompt holds no documents
    plain = GenRequest(prompt="The capital of Veloria is", max_tokens=8)
    assert gen.generate([plain])[0].text == gen.generate([GenRequest(prompt=plain.prompt, max_tokens=8,
                                                                     quote_guard=True)])[0].text


@pytest.mark.parametrize(("engine_default", "field", "want"), [(False, None, False), (True, None, True),
                                                                (True, False, False), (False, True, True)])
def test_a_request_field_overrides_the_engines_quote_guard(engine_default, field, want):
    from serving.batched.app import _gen_request
    from serving.protocol import ChatCompletionRequest

    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    req = ChatCompletionRequest(**body, **({} if field is None else {"quote_guard": field}))
    assert _gen_request(req, 8, engine_default, messages=body["messages"]).quote_guard is want


def test_an_engine_started_with_the_guard_builds_its_token_table_at_warm_up(tiny_model_dir):
    """Not on the first guarded request: that request would wait for one decode per vocabulary entry."""
    from serving.batched.generator import warm_up

    plain = BatchGenerator(tiny_model_dir)
    warm_up(plain)
    assert getattr(plain.tokenizer, "_raft_quote_pieces", None) is None
    guarded = BatchGenerator(tiny_model_dir)
    warm_up(guarded, quote_guard=True)
    pieces = getattr(guarded.tokenizer, "_raft_quote_pieces", None)
    assert pieces is not None and len(pieces) == len(guarded.tokenizer)
