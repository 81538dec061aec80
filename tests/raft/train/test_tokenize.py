"""Rendering, label masks, document trimming and packing (no Ray)."""

from __future__ import annotations

import json

import pytest

from raft import prompt
from raft.train.data import example_from_record, load_examples
from raft.train.tokenize import Renderer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def records(raft_dataset):
    return [json.loads(line) for line in (raft_dataset / "raft" / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["generation", "prefix"])
def test_labels_cover_only_the_answer(tok, records, mode):
    r = Renderer(tok, 1024, label_mode=mode)
    for rec in records[:5]:
        ids, labels, trimmed = r.encode(example_from_record(rec, "t"))
        assert not trimmed and len(ids) == len(labels)
        answer_pos = [i for i, x in enumerate(labels) if x != -100]
        assert answer_pos, "no answer tokens"
        # all answer tokens are one contiguous tail span; everything before it (system, docs, question) is -100
        assert answer_pos == list(range(answer_pos[0], answer_pos[-1] + 1))
        assert all(x == -100 for x in labels[: answer_pos[0]])
        assert [ids[i] for i in answer_pos] == [labels[i] for i in answer_pos]
        learned = tok.decode([ids[i] for i in answer_pos])
        assert learned.strip().startswith(rec["cot_answer"].strip()[:20]) and rec["question"] not in learned
        # the prompt part is exactly what serving sends: chat template over raft.prompt messages
        served = tok.apply_chat_template(prompt.messages_from_record(rec, with_answer=False), tokenize=False,
                                         add_generation_prompt=True)
        assert tok.decode(ids[: answer_pos[0]]) == served


def test_trims_documents_before_question_or_answer(tok, records):
    rec = max(records, key=lambda x: len(x["context"]["sentences"][0]))
    ex = example_from_record(rec, "t")
    full = len(Renderer(tok, 4096).encode(ex)[0])
    budget = full - 40
    ids, labels, trimmed = Renderer(tok, budget).encode(ex)
    assert trimmed and len(ids) <= budget
    text = tok.decode(ids)
    assert rec["question"] in text and rec["cot_answer"] in text
    assert rec["oracle_context"][:40] in text, "the oracle document must survive distractor removal"
    # a budget smaller than question + answer: the example is dropped and reported, never cut mid-answer
    out, stats = Renderer(tok, 40).encode_all([ex])
    assert out == [] and stats.dropped == [rec["id"]]


def test_packed_loss_equals_padded_loss(tiny_model_dir, tok, records):
    """Padding-free packing (position_ids restart, no mask) computes the same loss as padded rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from raft.train.batching import collate

    enc, _ = Renderer(tok, 1024).encode_all([example_from_record(r, "t") for r in records[:3]])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    n = sum(int((torch.tensor(e["labels"][1:]) != -100).sum()) for e in enc)
    with torch.no_grad():
        packed = model(**collate(enc, [0, 1, 2], "pack", tok.pad_token_id), num_items_in_batch=n).loss
        padded = model(**collate(enc, [0, 1, 2], "group", tok.pad_token_id), num_items_in_batch=n).loss
        # rows of bounded length (sdpa path): two rows, the shorter one ends in a padding segment
        row_len = len(enc[0]["input_ids"]) + len(enc[1]["input_ids"])
        rows = collate(enc, [0, 1, 2], "pack", tok.pad_token_id, row_len=row_len)
        assert rows["input_ids"].shape[0] == 2 and rows["attention_mask"].dim() == 4
        multi = model(**rows, num_items_in_batch=n).loss
    assert packed.item() == pytest.approx(padded.item(), rel=1e-4)
    assert multi.item() == pytest.approx(padded.item(), rel=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_example_sees_only_itself(tiny_model_dir, tok, records, attn):
    """Each packed example's logits equal the same example run alone: no attention across examples."""
    import torch
    from transformers import AutoModelForCausalLM

    from raft.train.batching import collate

    enc, _ = Renderer(tok, 1024).encode_all([example_from_record(r, "t") for r in records[:3]])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32,
                                                 attn_implementation=attn).eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in collate(enc, [0, 1, 2], "pack", tok.pad_token_id).items()
                          if k != "labels"}).logits[0]
        start = 0
        for e in enc:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-4), (attn, start)
            start += n


def test_reads_gorilla_and_chat_records(tmp_path, records):
    g = tmp_path / "gorilla.jsonl"
    g.write_text("".join(json.dumps({"instruction": r["instruction"], "cot_answer": r["cot_answer"]}) + "\n"
                         for r in records[:3]))
    ex, _ = load_examples(str(g), "train")
    assert ex[0].render()[1]["content"] == records[0]["instruction"]
    c = tmp_path / "chat.jsonl"
    c.write_text("".join(json.dumps({"messages": prompt.messages_from_record(r)}) + "\n" for r in records[:3]))
    ex2, _ = load_examples(str(c), "train")
    assert ex2[0].render() == prompt.messages_from_record(records[0])
