import pytest

from raft.eval.metrics import (citation_scores, exact_match, looks_like_api, mean, normalize_answer,
                               hit_at_k, normalize_api_call, parse_judge_score, quote_validity,
                               quoted_doc_ids, ranking_metrics, recall_at_k, reciprocal_rank, token_f1)


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  a   cat, AN apple ", "cat apple"),
    ("", ""),
    ("Paris.", "paris"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("pred, golds, style, em, f1", [
    ("Paris", ["paris"], "text", 1.0, 1.0),
    ("the city of Paris", ["Paris"], "text", 0.0, 0.5),
    ("London", ["Paris", "london."], "text", 1.0, 1.0),
    ("", ["Paris"], "text", 0.0, 0.0),
    ("red blue", ["blue red green"], "text", 0.0, 0.8),
    # API calls: quote style, spacing and keyword order do not matter; values do
    ("torch.hub.load(model='b', repo_or_dir=\"a\")", ["torch.hub.load(repo_or_dir='a', model='b')"], "api", 1.0, 1.0),
    ("`torch.hub.load( repo_or_dir='a', model='b' )`", ["torch.hub.load(repo_or_dir='a', model='b')"], "api", 1.0, 1.0),
    ("Use pipeline('ner', model='x') here", ["pipeline('ner', model='x')"], "api", 1.0, 1.0),
    ("torch.hub.load(repo_or_dir='a', model='c')", ["torch.hub.load(repo_or_dir='a', model='b')"], "api", 0.0, None),
])
def test_exact_match_and_f1(pred, golds, style, em, f1):
    assert exact_match(pred, golds, style) == em
    got = token_f1(pred, golds, style)
    if f1 is None:
        assert 0.0 < got < 1.0
    else:
        assert got == pytest.approx(f1)


@pytest.mark.parametrize("text, expected", [
    ("f(b=2, a=1)", "f(a=1,b=2)"),
    ("f(1, 'x', k=True)", "f(1,'x',k=True)"),
    ("  'not a call' ", "notacall"),
])
def test_normalize_api_call(text, expected):
    assert normalize_api_call(text) == expected


def test_looks_like_api():
    assert looks_like_api(["torch.hub.load(repo_or_dir='a')", "pipeline('x')"])
    assert not looks_like_api(["Paris", "torch.hub.load()"])
    assert not looks_like_api([])


@pytest.mark.parametrize("retrieved, gold, k, expected", [
    (["a", "b", "c"], ["b"], 1, 0.0),
    (["a", "b", "c"], ["b"], 2, 1.0),
    (["a", "b", "c"], ["b", "z"], 3, 0.5),
    (["a", "a", "b"], ["b"], 2, 1.0),   # duplicates (several chunks of one doc) count once
    (["a"], [], 1, None),
])
def test_recall_at_k(retrieved, gold, k, expected):
    assert recall_at_k(retrieved, gold, k) == expected


@pytest.mark.parametrize("retrieved, gold, expected", [
    (["g", "x"], ["g"], 1.0),
    (["x", "x", "g"], ["g"], 0.5),
    (["x", "y"], ["g"], 0.0),
    (["x"], [], None),
])
def test_reciprocal_rank(retrieved, gold, expected):
    assert reciprocal_rank(retrieved, gold) == expected


@pytest.mark.parametrize("retrieved, gold, k, expected", [
    (["a", "b", "c"], ["b", "z"], 1, 0.0),
    (["a", "b", "c"], ["b", "z"], 2, 1.0),   # one gold id found is a hit, unlike recall_at_k's 0.5
    (["a", "a", "b"], ["b"], 2, 1.0),
    (["a"], [], 1, None),
])
def test_hit_at_k(retrieved, gold, k, expected):
    assert hit_at_k(retrieved, gold, k) == expected


def test_reciprocal_rank_cutoff():
    assert reciprocal_rank(["x", "y", "g"], ["g"], cutoff=3) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y", "g"], ["g"], cutoff=2) == 0.0


def test_ranking_metrics_means_over_every_query_asked():
    orders = [["g1", "x"], [f"x{i}" for i in range(5)] + ["g2"], ["y"]]
    golds = [{"g1", "h"}, {"g2"}, set()]   # the third query has no gold: a miss in the denominator
    m = ranking_metrics(orders, golds, hit_ks=(1, 10), full_recall_ks=(5,), mrr_cutoff=10)
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@10": 2 / 3, "full_recall@5": 0.5 / 3,
                               "mrr@10": (1 + 1 / 6) / 3})
    assert ranking_metrics(orders, golds, mrr_cutoff=5)["mrr@5"] == pytest.approx(1 / 3)


def test_quotes_and_citations():
    docs = [{"doc_id": "d1", "text": "The sky is blue.  It rains."}, {"doc_id": "d2", "text": "Grass is green."}]
    answer = "##begin_quote## the SKY is   blue. ##end_quote## ##begin_quote##made up##end_quote## <ANSWER>: blue"
    assert quote_validity(answer, docs) == (2, 1)
    assert quote_validity("no quotes", docs) == (0, 0)
    assert quoted_doc_ids(answer, docs) == ["d1"]
    assert citation_scores(["d1", "d2"], ["d1"]) == (0.5, 1.0)
    assert citation_scores([], ["d1"]) == (None, 0.0)
    assert citation_scores(["d1"], []) == (None, None)


@pytest.mark.parametrize("reply, expected", [
    ("Score: 4 - mostly right", 4.0),
    ('{"score": 5, "reason": "exact"}', 5.0),
    ("I would give it 3/5.", 3.0),
    ("3 out of 5", 3.0),
    ("2", 2.0),
    ("**4** because...", 4.0),
    ("Rating: 1", 1.0),
    ("Score: 9", None),
    ("no idea", None),
    ("", None),
])
def test_parse_judge_score(reply, expected):
    assert parse_judge_score(reply) == expected


def test_mean_skips_none():
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None
