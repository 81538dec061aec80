from raft.data.generation import answer_in_text, check_answer, parse_questions, quote_supports_answer
from raft.prompt import cot_answer

ORACLE = "The capital of Veloria is Portivel. It was founded in 1620 by fishermen."


def test_parse_questions_strips_numbering_drops_dups_and_enforces_count():
    text = ("Here are 3 questions:\n1. What is the capital of Veloria?\n2) When was Portivel founded?\n"
            "\n- what is the capital of veloria?\n* Q3: Who founded Portivel?\n\"Who rules Veloria?\"\n")
    assert parse_questions(text, 3) == ["What is the capital of Veloria?", "When was Portivel founded?",
                                        "Who founded Portivel?"]
    assert parse_questions(text, 10)[-1] == "Who rules Veloria?"
    assert parse_questions("", 3) == [] and parse_questions("1.\n2.\n???", 3) == []


def test_check_answer_verifies_every_quote_against_the_oracle():
    ok = cot_answer("Because", ["the capital of veloria is   Portivel."], "Portivel")
    assert check_answer(ok, [ORACLE]) == (None, {"quotes": 1, "verified": 1})
    bad = cot_answer("Because", ["The capital of Veloria is Portivel.", "is the largest city."], "Portivel")
    assert check_answer(bad, [ORACLE])[0] == "quote_not_in_oracle"
    assert check_answer(bad, [ORACLE])[1] == {"quotes": 2, "verified": 1}
    # a quote may come from any of several oracle chunks (multi-hop)
    assert check_answer(bad, [ORACLE, "Portivel is the largest city."])[0] is None


def test_check_answer_reasons():
    assert check_answer("", [ORACLE])[0] == "empty"
    assert check_answer("I'm sorry, I cannot help with that.", [ORACLE])[0] == "refused"
    assert check_answer("Portivel", [ORACLE])[0] == "no_answer_tag"
    assert check_answer("reasoning <ANSWER>:  ", [ORACLE])[0] == "empty_answer"
    assert check_answer("reasoning <ANSWER>: Portivel", [ORACLE])[0] == "no_quotes"
    full = cot_answer("Because", ["The capital of Veloria is Portivel."], "Portivel")
    assert check_answer(full, [ORACLE], finish_reason="length")[0] == "truncated"


def test_a_verified_quote_must_hold_the_final_answer():
    unrelated = cot_answer("Because", ["It was founded in 1620 by fishermen."], "Portivel")
    assert check_answer(unrelated, [ORACLE]) == ("quote_not_supporting_answer", {"quotes": 1, "verified": 1})
    # one supporting quote among several is enough (multi-hop: the bridge quote need not hold the answer)
    two = cot_answer("Because", ["It was founded in 1620 by fishermen.", "The capital of Veloria is Portivel."],
                     "Portivel")
    assert check_answer(two, [ORACLE])[0] is None
    # the eval's answer normalisation: case, punctuation, articles; whole words only
    assert check_answer(cot_answer("So", ["It was founded in 1620 by fishermen."], "The fishermen."), [ORACLE])[0] is None
    assert check_answer(cot_answer("So", ["It was founded in 1620 by fishermen."], "fish"), [ORACLE])[0] \
        == "quote_not_supporting_answer"
    # yes/no answers are exempt: no sentence holds "yes"
    assert check_answer(cot_answer("So", ["The capital of Veloria is Portivel."], "Yes."), [ORACLE])[0] is None


def test_answer_in_text_and_api_calls():
    assert answer_in_text("1844", "Arthur's Magazine (1844\u20131846) was a periodical")
    assert not answer_in_text("art", "a party") and not answer_in_text("", "anything")
    doc = '{"api_name": "ResNet50", "api_call": "torch.hub.load(repo_or_dir=\'pytorch/vision\', model=\'resnet50\')"}'
    call = "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet50', pretrained=True)"
    assert quote_supports_answer([doc], call, mode="api")
    assert not quote_supports_answer(['{"api_name": "ResNet50"}'], call, mode="api")
    assert check_answer(cot_answer("So", [doc], call), [doc], mode="api")[0] is None
