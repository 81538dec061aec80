from raft.data.generation import check_answer, parse_questions
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
