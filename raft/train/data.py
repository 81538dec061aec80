"""Read training records from wherever they live and turn each into chat messages via raft/prompt.py.

Accepted inputs (the first that matches wins):
- a `raft build` output dir: OUT/raft/{split}.jsonl (full RAFT records), else OUT/hf (DatasetDict), else OUT/chat;
- a .jsonl / .json file of records;
- a `datasets.save_to_disk` directory (Dataset or DatasetDict);
- a hub dataset name (only when the hub is reachable).

Record kinds: RAFT records (question + context + cot_answer, ours or gorilla's), gorilla `raft.py` records that
only carry `instruction` + `cot_answer` (the instruction already holds the documents), and chat records with
`messages`. An `Example` keeps the structured question/docs when there are any, so the tokenizer can trim
documents to fit `max_seq_len` and re-render through the same prompt function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from raft import prompt
from raft.errors import RaftError
from raft.jsonl import iter_jsonl
from raft.model_source import hub_repo_id

RAFT_FIELDS = ("question", "context", "cot_answer")
NO_DATA = "no training data: set train.data.path (a `raft build` output dir or a .jsonl file)"
WHAT_DATA = ("give a `raft build --out` dir, a .jsonl file, a save_to_disk dir or a hub dataset name "
             "(train.data.path=...)")


@dataclass
class Example:
    """One training example before tokenization."""

    id: str
    messages: list[dict[str, str]] | None = None  # chat records: used as they are
    question: str | None = None  # RAFT records: rendered (and trimmed) through raft.prompt
    docs: list[dict[str, str]] = field(default_factory=list)
    answer: str | None = None
    instruction: str | None = None  # gorilla records without `context`: the rendered user turn
    oracle_idx: set[int] = field(default_factory=set)  # shown positions of oracle docs (kept longest)

    def render(self, docs: Optional[list[dict[str, str]]] = None) -> list[dict[str, str]]:
        """Chat messages, the answer last; `docs` replaces the shown documents (for trimming)."""
        if self.messages is not None:
            return self.messages
        if self.question is None:
            msgs = [{"role": "system", "content": prompt.SYSTEM_PROMPT},
                    {"role": "user", "content": self.instruction or ""}]
            return msgs + [{"role": "assistant", "content": self.answer or ""}]
        return prompt.build_messages(self.question, self.docs if docs is None else docs, self.answer)

    def completion(self, docs: Optional[list[dict[str, str]]] = None) -> tuple[str, str]:
        """(prompt, answer) for tokenizers without a chat template: raft.prompt.completion_prompt."""
        if self.question is not None:
            return prompt.completion_prompt(self.question, self.docs if docs is None else docs), \
                " " + (self.answer or "")
        msgs = self.render()
        user = "\n\n".join(prompt.message_text(m) for m in msgs[:-1] if m["role"] != "assistant")
        return f"{user}\nAnswer:", " " + prompt.message_text(msgs[-1])


def _oracle_positions(rec: dict, docs: list[dict]) -> set[int]:
    shown, oracle = rec.get("doc_ids") or [], set(rec.get("oracle_ids") or [])
    if shown and oracle:
        return {i for i, d in enumerate(shown) if d in oracle}
    oc = rec.get("oracle_context")
    if isinstance(oc, str) and oc.strip():
        return {i for i, d in enumerate(docs) if d["text"].strip() and d["text"].strip() in oc}
    return set()


def example_from_record(rec: dict[str, Any], where: str) -> Example:
    """Classify one record; RaftError names the missing columns and the accepted layouts."""
    rid = str(rec.get("id", where))
    if "messages" in rec and rec["messages"]:
        msgs = [{"role": m["role"], "content": prompt.message_text(m)} for m in rec["messages"]]
        if msgs[-1]["role"] != "assistant":
            raise RaftError(f"{where}: the last message has role {msgs[-1]['role']!r}; chat records must end "
                            "with the assistant answer to train on")
        return Example(id=rid, messages=msgs)
    if rec.get("question") is not None and rec.get("context") and rec.get("cot_answer") is not None:
        docs = prompt.docs_from_record(rec)
        return Example(id=rid, question=str(rec["question"]), docs=docs, answer=str(rec["cot_answer"]),
                       oracle_idx=_oracle_positions(rec, docs))
    if rec.get("instruction") and rec.get("cot_answer") is not None:
        return Example(id=rid, instruction=str(rec["instruction"]), answer=str(rec["cot_answer"]))
    present = sorted(rec)
    missing = [f for f in RAFT_FIELDS if f not in rec]
    raise RaftError(
        f"{where}: record is missing columns {missing} (has {present}). Training needs RAFT records "
        "(question, context, cot_answer), gorilla raft.py records (instruction, cot_answer) or chat records "
        "(messages ending with an assistant turn).")


def _read_jsonl(path: Path) -> list[dict]:
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return json.loads(text)
    return [row for _, row in iter_jsonl(path)]


def _hf_rows(obj, split: str, where: str) -> list[dict] | None:
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        if split not in obj:
            return None
        obj = obj[split]
    return [dict(r) for r in obj]


def check_data_source(path: str) -> None:
    """The cheap part of reading the data, done before the model is looked up (which may wait on the hub):
    a missing data.path is said at once."""
    if not path:
        raise RaftError(NO_DATA)
    if not Path(path).expanduser().exists() and not hub_repo_id(path):
        raise RaftError(f"data path {path!r} does not exist; {WHAT_DATA}")


def read_split(path: str, split: str) -> tuple[list[dict], str] | None:
    """Rows of `split` from `path` and a description of where they came from; None if the split is absent."""
    p = Path(path)
    if p.is_dir():
        for sub, ext in (("raft", "jsonl"), ("chat", "jsonl")):
            f = p / sub / f"{split}.{ext}"
            if f.is_file():
                return _read_jsonl(f), str(f)
        if (p / "hf").is_dir() or (p / "dataset_dict.json").is_file() or (p / "dataset_info.json").is_file():
            from datasets import load_from_disk

            d = p / "hf" if (p / "hf").is_dir() else p
            rows = _hf_rows(load_from_disk(str(d)), split, str(d))
            return (rows, f"{d}[{split}]") if rows is not None else None
        for f in (p / f"{split}.jsonl", p / f"{split}.json"):
            if f.is_file():
                return _read_jsonl(f), str(f)
        if any((p / sub).is_dir() for sub in ("raft", "chat")):
            return None  # a raft build dir without this split
        raise RaftError(f"data path {path!r} is a directory but holds no training data: expected a `raft build` "
                        "output (raft/train.jsonl), a datasets.save_to_disk dir, or {split}.jsonl files")
    if p.is_file():
        # A single file is the training split; eval needs data.eval_path or another split file.
        return (_read_jsonl(p), str(p)) if split == "train" or p.stem == split else None
    if hub_repo_id(path):
        try:
            from datasets import load_dataset

            return [dict(r) for r in load_dataset(path, split=split)], f"hub:{path}[{split}]"
        except ValueError:
            return None
        except Exception as e:
            raise RaftError(f"data path {path!r} is not a local file or dir, and loading it as a hub dataset "
                            f"failed: {e}") from None
    raise RaftError(f"data path {path!r} does not exist; {WHAT_DATA}")


def load_examples(path: str, split: str, limit: int | None = None,
                  required: bool = True) -> tuple[list[Example], str]:
    """Examples of one split; RaftError for an empty/missing required split or malformed records."""
    if not path:
        raise RaftError(NO_DATA)
    got = read_split(path, split)
    if got is None or not got[0]:
        if not required:
            return [], (got[1] if got else f"{path}[{split}]")
        where = got[1] if got else f"{path} (split {split!r})"
        raise RaftError(f"training dataset is empty: {where} has no records. Build one with `raft build` or "
                        "point train.data.path / train.data.train_split at a non-empty split")
    rows, where = got
    rows = rows[:limit] if limit else rows
    return [example_from_record(r, f"{where} record {i + 1}") for i, r in enumerate(rows)], where


def dataset_fingerprint(path: str) -> str | None:
    """The builder's manifest fingerprint when training from a `raft build` dir."""
    m = Path(path) / "manifest.json"
    try:
        return json.loads(m.read_text()).get("fingerprint") if m.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
