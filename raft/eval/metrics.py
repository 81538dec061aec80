"""Evaluation metrics: answer EM / token F1 (SQuAD-style or API-call style), retrieval recall@k and MRR,
quote validity, citation precision / recall. Pure functions, no I/O, so they are table-tested.
"""

from __future__ import annotations

import ast
import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from raft.prompt import extract_quotes, quote_in

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_CALL_RE = re.compile(r"[A-Za-z_][\w.]*\s*\(")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _canon_node(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        func = ast.unparse(node.func).replace(" ", "")
        args = [_canon_node(a) for a in node.args]
        # keyword order carries no meaning in Python calls: sort so f(a=1, b=2) == f(b=2, a=1)
        kwargs = sorted(f"{k.arg}={_canon_node(k.value)}" for k in node.keywords if k.arg)
        return f"{func}({','.join(args + kwargs)})"
    if isinstance(node, ast.Constant):
        return repr(node.value) if not isinstance(node.value, str) else repr(node.value.strip())
    return ast.unparse(node).replace(" ", "").replace('"', "'")


def _find_call(text: str) -> ast.Call | None:
    """The first parseable Python call in `text` (answers often wrap it in prose or backticks)."""
    text = text.strip().strip("`").strip()
    for m in _CALL_RE.finditer(text):
        start, depth = m.start(), 0
        for i in range(m.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                try:
                    tree = ast.parse(text[start:i + 1], mode="eval")
                except SyntaxError:
                    break
                if isinstance(tree.body, ast.Call):
                    return tree.body
                break
    return None


def normalize_api_call(text: str) -> str:
    """Canonical form of an API call answer: the call's name, positional args, then keyword args in
    sorted order, with whitespace and quote style removed; text without a parseable call is stripped
    of spaces, backticks and quotes instead."""
    call = _find_call(text or "")
    if call is not None:
        return _canon_node(call).replace('"', "'")
    return re.sub(r"[\s`'\"]", "", text or "")


def looks_like_api(answers: Iterable[str]) -> bool:
    """True when every gold answer is a single call such as `torch.hub.load(...)`."""
    answers = [a for a in answers if a and a.strip()]
    return bool(answers) and all(_find_call(a) is not None and a.strip().endswith(")") for a in answers)


def _tokens(text: str, style: str) -> list[str]:
    if style == "api":
        return [t for t in re.split(r"[^\w.]+", normalize_api_call(text)) if t]
    return normalize_answer(text).split()


def exact_match(prediction: str, answers: Sequence[str], style: str = "text") -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    norm = normalize_api_call if style == "api" else normalize_answer
    pred = norm(prediction)
    return float(any(pred == norm(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str], style: str = "text") -> float:
    """Best token-overlap F1 between the prediction and any gold answer (SQuAD definition)."""
    pred = _tokens(prediction, style)
    best = 0.0
    for a in answers:
        gold = _tokens(a, style)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def _unique(ids: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def recall_at_k(retrieved: Sequence[str], gold: Iterable[str], k: int) -> float | None:
    """Share of gold ids found among the first k distinct retrieved ids; None without gold ids."""
    gold = set(gold)
    if not gold:
        return None
    return len(gold & set(_unique(retrieved)[:k])) / len(gold)


def hit_at_k(retrieved: Sequence[str], gold: Iterable[str], k: int) -> float | None:
    """1.0 if any gold id is among the first k distinct retrieved ids, else 0.0; None without gold ids. (The
    retrieval benchmarks' "recall@k": a question counts as found when one of its gold passages is.)"""
    gold = set(gold)
    if not gold:
        return None
    return float(bool(gold & set(_unique(retrieved)[:k])))


def reciprocal_rank(retrieved: Sequence[str], gold: Iterable[str], cutoff: int | None = None) -> float | None:
    """1/rank of the first gold id among the distinct retrieved ids (0 if none, or if it ranks below `cutoff`);
    None without gold."""
    gold = set(gold)
    if not gold:
        return None
    for rank, i in enumerate(_unique(retrieved)[:cutoff], 1):
        if i in gold:
            return 1.0 / rank
    return 0.0


def ranking_metrics(orders: Sequence[Sequence[str]], golds: Sequence[Iterable[str]], hit_ks: Iterable[int] = (5,),
                    full_recall_ks: Iterable[int] = (), mrr_cutoff: int = 10) -> dict[str, float]:
    """Means over queries of hit_at_k (key "recall@k"), recall_at_k ("full_recall@k") and reciprocal_rank cut at
    `mrr_cutoff` ("mrr@{mrr_cutoff}"), for the ranked ids `orders[i]` of query i against its gold ids `golds[i]`.
    A query without gold ids counts as a miss: every query asked is in the denominator."""
    golds = [set(g) for g in golds]
    n = max(1, len(golds))

    def mean(values) -> float:
        return sum(v or 0.0 for v in values) / n

    out = {f"recall@{k}": mean(hit_at_k(o, g, k) for o, g in zip(orders, golds)) for k in hit_ks}
    out |= {f"full_recall@{k}": mean(recall_at_k(o, g, k) for o, g in zip(orders, golds)) for k in full_recall_ks}
    out[f"mrr@{mrr_cutoff}"] = mean(reciprocal_rank(o, g, mrr_cutoff) for o, g in zip(orders, golds))
    return out


def quote_validity(answer: str, docs: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(number of quotes in the answer, number that appear verbatim, modulo case/space, in a shown doc)."""
    quotes = extract_quotes(answer)
    valid = sum(1 for q in quotes if any(quote_in(q, str(d.get("text", ""))) for d in docs))
    return len(quotes), valid


def quoted_doc_ids(answer: str, docs: Sequence[Mapping[str, Any]], key: str = "doc_id") -> list[str]:
    """Ids of shown docs that contain at least one of the answer's quotes (the docs it cites)."""
    quotes = extract_quotes(answer)
    return _unique(str(d.get(key)) for d in docs
                   if d.get(key) is not None and any(quote_in(q, str(d.get("text", ""))) for q in quotes))


def citation_scores(cited: Iterable[str], gold: Iterable[str]) -> tuple[float | None, float | None]:
    """(precision, recall) of cited ids vs gold ids; precision None when nothing is cited,
    both None without gold ids."""
    cited, gold = set(cited), set(gold)
    if not gold:
        return None, None
    precision = len(cited & gold) / len(cited) if cited else None
    return precision, len(cited & gold) / len(gold)


_SCORE_PATTERNS = [
    re.compile(r'"?score"?\s*[:=]\s*"?([1-5](?:\.\d+)?)'),
    re.compile(r"\b([1-5](?:\.\d+)?)\s*(?:/|out of)\s*5\b"),
    re.compile(r"(?:rating|grade)\s*[:=]?\s*([1-5](?:\.\d+)?)"),
    re.compile(r"^\s*\**\s*([1-5])\b"),
]


def parse_judge_score(text: str) -> float | None:
    """A 1-5 score from a judge reply ("Score: 4", '{"score": 4}', "4/5", "4"); None if there is none."""
    low = (text or "").lower()
    for pat in _SCORE_PATTERNS:
        found = pat.findall(low.strip())
        if found:
            value = float(found[-1])
            if 1.0 <= value <= 5.0:
                return value
    return None


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The q-th percentile (0-100) of the values that are not None, interpolated linearly between the two
    nearest ranks (numpy's default); None when there are none."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    pos = (len(vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
