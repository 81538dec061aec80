"""Read evaluation questions from any of the three shapes the project produces or ships:

- `questions.jsonl` {id, question, answers, gold_ids}  (gold_ids = corpus document ids),
- builder eval split OUT/eval/{split}.jsonl {id, question, answers, gold_ids, doc_ids, oracle_ids}
  (shown document texts are joined from OUT/raft/{split}.jsonl when it is there),
- full RAFT records OUT/raft/{split}.jsonl (shown documents in `context`, oracle chunk ids in `oracle_ids`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft.errors import RaftError
from raft.jsonl import iter_jsonl
from raft.prompt import docs_from_record, extract_answer


@dataclass
class EvalItem:
    """One question with what is known about its answer and its gold passages."""

    id: str
    question: str
    answers: list[str]
    gold_doc_ids: list[str] = field(default_factory=list)
    gold_chunk_ids: list[str] = field(default_factory=list)
    shown: list[dict[str, Any]] | None = None
    """Documents the record showed (title, text, chunk_id, doc_id, oracle flag), in shown order."""
    oracle_docs: list[dict[str, Any]] = field(default_factory=list)
    """The oracle documents' texts, also when the record left them out of `shown`."""

    @property
    def distractors(self) -> list[dict[str, Any]]:
        return [d for d in (self.shown or []) if not d.get("oracle")]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)] if str(value) else []


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    return list(iter_jsonl(path))


def _oracle_texts(rec: dict) -> list[dict[str, Any]]:
    oc = rec.get("oracle_context")
    items = oc if isinstance(oc, list) else ([oc] if oc else [])
    out = []
    for x in items:
        if isinstance(x, dict):
            out.append({"title": x.get("title", ""), "text": x.get("text", ""), "oracle": True,
                        "chunk_id": x.get("chunk_id"), "doc_id": x.get("doc_id")})
        elif x:
            out.append({"title": "", "text": str(x), "oracle": True})
    return out


def item_from_row(row: dict, where: str) -> EvalItem:
    """Turn one JSON row of any supported shape into an EvalItem; RaftError names `where` on a bad row."""
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RaftError(f"{where}: field 'question' is missing or empty; rows need "
                        "{id, question, answers} (questions.jsonl) or a RAFT record")
    answers = _as_list(row.get("answers"))
    if not answers and row.get("final_answer"):
        answers = [str(row["final_answer"])]
    if not answers and row.get("cot_answer"):
        answers = [extract_answer(str(row["cot_answer"]))]
    if not answers:
        raise RaftError(f"{where}: no gold answer: need 'answers' (a list), 'final_answer' or 'cot_answer'")
    oracle_ids = _as_list(row.get("oracle_ids"))
    item = EvalItem(id=str(row.get("id", where)), question=question.strip(), answers=answers,
                    gold_doc_ids=_as_list(row.get("gold_ids")), gold_chunk_ids=oracle_ids)
    if row.get("context"):
        shown = docs_from_record(row)
        ids = _as_list(row.get("doc_ids"))
        for i, d in enumerate(shown):
            d["chunk_id"] = ids[i] if i < len(ids) else None
            d["oracle"] = d["chunk_id"] in oracle_ids if oracle_ids else False
        item.shown = shown
        item.oracle_docs = [d for d in shown if d["oracle"]] or _oracle_texts(row)
    return item


def resolve_data_path(data: str, split: str = "test") -> Path:
    """A file, or a dataset directory whose eval/ (joined with raft/) or raft/ split is used."""
    if not data:
        raise RaftError("no questions given: set eval.data (or --data FILE)")
    p = Path(data)
    if p.is_dir():
        for cand in (p / "eval" / f"{split}.jsonl", p / "raft" / f"{split}.jsonl", p / f"{split}.jsonl"):
            if cand.is_file():
                return cand
        raise RaftError(f"{p} is a directory without eval/{split}.jsonl or raft/{split}.jsonl; "
                        "point eval.data at a .jsonl file or a `raft build` output directory")
    if not p.is_file():
        raise RaftError(f"questions file {str(p)!r} does not exist")
    return p


def load_items(data: str, split: str = "test", limit: int = 0) -> list[EvalItem]:
    """Load questions; an OUT/eval split is enriched with the shown documents of the matching OUT/raft split."""
    path = resolve_data_path(data, split)
    rows = _read_jsonl(path)
    if not rows:
        raise RaftError(f"{path} holds no questions")
    sibling = path.parent.parent / "raft" / path.name
    records: dict[str, dict] = {}
    if path.parent.name == "eval" and sibling.is_file():
        records = {str(r.get("id")): r for _, r in _read_jsonl(sibling)}
    items = []
    for n, row in rows:
        rec = records.get(str(row.get("id")))
        if rec is not None:  # eval row keeps its gold fields, the record supplies the shown texts
            row = {**rec, **{k: v for k, v in row.items() if v not in (None, [], "")}}
        items.append(item_from_row(row, f"{path}:{n}"))
        if limit and len(items) >= limit:
            break
    return items


def with_distractors(item: EvalItem, n: int, pool: list[dict[str, Any]], seed: int = 0) -> list[dict] | None:
    """The oracle doc(s) plus `n` distractors, shuffled: the record's own distractors first, topped up
    from `pool` (other records' documents). None when the item has no known oracle text."""
    if not item.oracle_docs:
        return None
    oracle_texts = {d.get("text") for d in item.oracle_docs}
    rng = random.Random(f"{seed}:{item.id}:{n}")
    chosen = [d for d in item.distractors if d.get("text") not in oracle_texts][:n]
    if len(chosen) < n and pool:
        seen = oracle_texts | {d.get("text") for d in chosen}
        extra = [d for d in pool if d.get("text") not in seen]
        rng.shuffle(extra)
        for d in extra:
            if len(chosen) >= n:
                break
            if d.get("text") not in seen:
                seen.add(d.get("text"))
                chosen.append({**d, "oracle": False})
    docs = list(item.oracle_docs) + chosen
    rng.shuffle(docs)
    return docs


def document_pool(items: list[EvalItem]) -> list[dict[str, Any]]:
    """Every distinct document shown in any record (oracles and distractors), for topping up distractors."""
    seen, pool = set(), []
    for it in items:
        for d in (it.shown or []) + it.oracle_docs:
            if d.get("text") and d["text"] not in seen:
                seen.add(d["text"])
                pool.append(d)
    return pool
