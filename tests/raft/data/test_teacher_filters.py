"""The stepwise teacher's text checks (raft/data/teacher_filters.py), on replies SmolLM2-135M really wrote."""

import pytest

from raft.data.teacher_filters import (answer_candidates, clean_question, focus_sentences, pick_answer,
                                       question_problem, rank_sentences)

BRIDGE = ("The Harbour Bridge in Portivel, opened in 1898, was the first iron bridge in the islands. It crosses "
          "the mouth of the Lune River and is 180 metres long.")


@pytest.mark.parametrize("reply,why", [
    ("What is the length of the Harbour Bridge?", None),
    ("Which bridge in the islands was the first iron bridge?", None),
    ("In which year did the Harbour Bridge open?", None),
    # the failure the cot prompt produced: corpus text instead of a question
    ("The answer to this question is: # Government of Veloria", "not_a_question"),
    ("The Harbour Bridge in Portivel, opened in 1898, was the first iron bridge in the islands.", "not_a_question"),
    ("Was the Harbour Bridge in Portivel, opened in 1898, the first iron bridge in the islands?", "copies_passage"),
    ("What does it cross?", "vague_pronoun"),
    ("What is your favourite colour?", "off_passage"),
    ("Why?", "bad_length"),
    ("", "empty"),
])
def test_question_problem(reply, why):
    assert question_problem(clean_question(reply), BRIDGE) == why


def test_clean_question_takes_the_first_question_of_a_chatty_reply():
    assert clean_question('1. "What is the length of the bridge?" It is long.\nWhen?') == \
        "What is the length of the bridge?"
    assert clean_question("\n\nQuestion: Who built it?") == "Who built it?"


def test_focus_sentences_skip_pronoun_openers_and_depend_on_the_seed():
    picks = {tuple(focus_sentences(BRIDGE + " The bridge was painted red in 1950.", 2, s)) for s in range(20)}
    assert all(not p.startswith("It ") for pick in picks for p in pick)
    assert len(picks) > 1  # a retry (another seed) can ask about another sentence
    assert focus_sentences("It is. It was here then.", 3, 0) == []


def test_answer_candidates_drop_the_words_the_question_already_holds():
    assert answer_candidates("the length of the Harbour Bridge is 180 metres",
                             "What is the length of the Harbour Bridge?")[0] == "180 metres"
    assert answer_candidates("the harbour bridge opened in 1898.", "When did the Harbour Bridge open?")[0] == "1898"
    assert answer_candidates("Answer: Portivel", "Where is the bridge?") == ["Portivel"]


def test_pick_answer_returns_the_span_as_the_sentence_writes_it_and_the_sentence():
    sents = rank_sentences("How long is the Harbour Bridge?", [BRIDGE])
    assert sents[0].startswith("It crosses") or sents[0].startswith("The Harbour")
    assert pick_answer("180 METRES", "How long is the Harbour Bridge?", sents) == \
        ("180 metres", "It crosses the mouth of the Lune River and is 180 metres long.")


@pytest.mark.parametrize("reply,why", [
    ("the bell tower of saint mera", "repeats_question"),      # asked "What is the Bell Tower of Saint Mera?"
    ("a pink elephant", "not_in_passage"),
    ("the", "only_stopwords"),
    ("", "empty"),
])
def test_pick_answer_says_why_a_reply_is_unusable(reply, why):
    sents = ["The tallest building in the city is the Bell Tower of Saint Mera, which is 64 metres high."]
    assert pick_answer(reply, "What is the Bell Tower of Saint Mera?", sents) == why


def test_rank_sentences_best_first():
    texts = ["The market opens at dawn. The bell tower is 64 metres high.", "Fish are sold by the harbour."]
    assert rank_sentences("How high is the bell tower?", texts, top=1) == ["The bell tower is 64 metres high."]
