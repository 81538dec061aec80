from raft.prompt import (ANSWER_TAG, SYSTEM_PROMPT, augment_messages, build_messages, cot_answer,
                         extract_answer, extract_quotes, quote_in)

DOCS = [{"title": "A", "text": "Alpha is first."}, {"title": "", "text": "Beta second."}]


def test_messages_render_documents_in_order_then_question():
    msgs = build_messages("Which is first?", DOCS)
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = msgs[1]["content"]
    assert user == ("<DOCUMENT>\nTitle: A\nAlpha is first.\n</DOCUMENT>\n"
                    "<DOCUMENT>\nBeta second.\n</DOCUMENT>\nQuestion: Which is first?")


def test_serving_augmentation_equals_training_rendering():
    client = [{"role": "user", "content": "Which is first?"}]
    assert augment_messages(client, DOCS) == build_messages("Which is first?", DOCS)


def test_cot_answer_roundtrip_and_quote_check():
    text = cot_answer("The doc says", ["Alpha  is FIRST."], "Alpha")
    assert extract_quotes(text) == ["Alpha  is FIRST."]
    assert extract_answer(text) == "Alpha"
    assert ANSWER_TAG in text
    assert quote_in("alpha is first.", DOCS[0]["text"])
    assert not quote_in("gamma", DOCS[0]["text"])
    assert not quote_in("   ", DOCS[0]["text"])


def test_record_roundtrip_matches_instruction():
    from raft.prompt import docs_from_record, messages_from_record, render_user

    rec = {"question": "Which is first?", "cot_answer": "x\n<ANSWER>: Alpha",
           "context": {"title": [["A", ""]], "sentences": [["Alpha is first.", "Beta second."]]}}
    assert docs_from_record(rec) == DOCS
    msgs = messages_from_record(rec)
    assert msgs[1]["content"] == render_user("Which is first?", DOCS)
    assert msgs[-1] == {"role": "assistant", "content": "x\n<ANSWER>: Alpha"}


def test_tiny_tokenizer_keeps_raft_tags_atomic_and_decodable(tiny_model_dir):
    from transformers import AutoTokenizer

    from raft.prompt import BEGIN_QUOTE, END_QUOTE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = f"x {BEGIN_QUOTE}Portivel{END_QUOTE}\n{ANSWER_TAG} Portivel"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for tag in (BEGIN_QUOTE, END_QUOTE, ANSWER_TAG):
        assert tok.convert_tokens_to_ids(tag) in ids, tag
    # engines decode with skip_special_tokens=True: the tags must survive it
    assert tok.decode(ids, skip_special_tokens=True) == text
