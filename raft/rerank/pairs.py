"""Training pairs for the reranker, read from a `raft build` output directory.

Per RAFT record: (question, oracle chunk) pairs labelled 1 and (question, distractor) pairs labelled 0.
The distractors are what makes this data good for a reranker: half of them were mined as the question's
nearest neighbours in the same index (mix.hard_ratio), so they are the hard negatives a reranker must push
down. A passage is read as the rerank stage reads it (title and text, retrieval.rerank.pair_text).

A record that leaves its oracle out (the RAFT P fraction) still names it in `oracle_ids`; its text is
found in another record that shows it, or in the dataset's index (DATASET/index, or `index_dir`), else the
positive is skipped and counted, because a positive without its title would be told apart by the missing title.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from raft.errors import RaftError
from raft.jsonl import iter_jsonl
from retrieval.rerank import pair_text
from retrieval.types import Chunk

PLACEHOLDER_TITLE = "placeholder_title"  # what the builder writes for an untitled chunk (gorilla's schema)


@dataclass
class Pairs:
    queries: list[str] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def add(self, query: str, passage: str, label: float) -> None:
        self.queries.append(query)
        self.passages.append(passage)
        self.labels.append(label)


def read_manifest(dataset: Path) -> dict:
    """The dataset's manifest.json (written last by `raft build`: its presence marks a complete dataset)."""
    path = dataset / "manifest.json"
    if not dataset.is_dir():
        raise RaftError(f"dataset directory {str(dataset)!r} does not exist; give the --out directory of `raft build`")
    if not path.is_file():
        raise RaftError(f"{str(dataset)!r} is not a finished `raft build` output (no manifest.json); give the --out "
                        "directory of a completed `raft build`, or rerun that build to finish it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RaftError(f"{path}: not valid JSON ({e}); rerun `raft build` to rewrite it") from None


def read_records(dataset: Path, split: str, manifest: dict) -> list[dict]:
    path = dataset / "raft" / f"{split}.jsonl"
    if not path.is_file():
        have = ", ".join(manifest.get("splits", [])) or "none"
        extra = "" if "raft" in manifest.get("formats", ["raft"]) else \
            " (the build did not write the `raft` format: add it to build.formats)"
        raise RaftError(f"dataset {str(dataset)!r} has no {split!r} split in raft/{extra}; its splits: {have}; "
                        "name others with splits=[...]")
    return [rec for _, rec in iter_jsonl(path, RaftError)]


def shown_chunks(rec: dict) -> dict[str, Chunk]:
    """The chunks a record shows, by chunk id (titles and texts from its `context`, in `doc_ids` order)."""
    ctx = rec.get("context") or {}
    titles = (ctx.get("title") or [[]])[0]
    texts = (ctx.get("sentences") or [[]])[0]
    ids = rec.get("doc_ids") or []
    if not (len(ids) == len(titles) == len(texts)):
        raise RaftError(f"record {rec.get('id')!r}: doc_ids, context.title and context.sentences differ in length "
                        f"({len(ids)}, {len(titles)}, {len(texts)}); rebuild the dataset with `raft build`")
    return {cid: Chunk(cid, "", text, "" if title == PLACEHOLDER_TITLE else title)
            for cid, title, text in zip(ids, titles, texts)}


def chunk_lookup(dataset: Path, manifest: dict, wanted: set[str], index_dir: str | None = None) -> dict[str, Chunk]:
    """Every chunk shown by any record of the dataset, plus those of `wanted` found in the dataset's index
    (`index_dir`, default DATASET/index)."""
    found: dict[str, Chunk] = {}
    for split in manifest.get("splits", []):
        path = dataset / "raft" / f"{split}.jsonl"
        if path.is_file():
            for _, rec in iter_jsonl(path, RaftError):
                found.update(shown_chunks(rec))
    missing = sorted(wanted - set(found))
    index = Path(index_dir) if index_dir else dataset / "index"
    if index_dir and not (index / "manifest.json").is_file():
        raise RaftError(f"index_dir {str(index)!r} is not an index directory (no manifest.json); give the index "
                        "the dataset was built from (its build.index_dir), or leave index_dir unset")
    if missing and (index / "manifest.json").is_file():
        from retrieval.index import RetrievalIndex

        idx = RetrievalIndex.open(index, verify=False)
        try:
            for i in range(0, len(missing), 4096):
                found.update({c.chunk_id: c for c in idx.get(missing[i:i + 4096])})
        finally:
            idx.close()
    return found


def make_pairs(dataset: Path, splits: list[str], negatives: int | None, seed: int,
               index_dir: str | None = None) -> tuple[Pairs, dict]:
    """Training pairs of `splits`, shuffled with `seed`; returns them and the dataset's manifest."""
    manifest = read_manifest(dataset)
    records = [r for s in splits for r in read_records(dataset, s, manifest)]
    if not records:
        raise RaftError(f"dataset {str(dataset)!r}: splits {', '.join(splits)} hold no records")
    lookup = chunk_lookup(dataset, manifest, {o for r in records for o in r.get("oracle_ids") or []}, index_dir)
    rows: list[tuple[str, str, float]] = []
    skipped_pos = 0
    for rec in records:
        q = rec["question"]
        oracles = list(rec.get("oracle_ids") or [])
        shown = shown_chunks(rec)
        for o in oracles:
            c = shown.get(o) or lookup.get(o)
            if c is None:
                skipped_pos += 1
                continue
            rows.append((q, pair_text(c), 1.0))
        distractors = [c for cid, c in shown.items() if cid not in set(oracles)]
        for c in distractors[:negatives] if negatives is not None else distractors:
            rows.append((q, pair_text(c), 0.0))
    random.Random(seed).shuffle(rows)
    pairs = Pairs()
    for q, p, y in rows:
        pairs.add(q, p, y)
    pos = int(sum(pairs.labels))
    pairs.stats = {"records": len(records), "pairs": len(rows), "positives": pos, "negatives": len(rows) - pos,
                   "positives_without_text": skipped_pos}
    if pos == 0 or pos == len(rows):
        raise RaftError(f"dataset {str(dataset)!r}: splits {', '.join(splits)} give {pos} positive and "
                        f"{len(rows) - pos} negative pairs; training needs both (build with "
                        "mix.num_distractors of at least 1)")
    return pairs, manifest


def eval_groups(dataset: Path, split: str, manifest: dict) -> list[tuple[str, list[str], list[bool]]]:
    """(question, shown passages, is-oracle flags) of the records of `split` that show an oracle and a
    distractor: what the trained model is measured on (MRR of the first oracle)."""
    out = []
    for rec in read_records(dataset, split, manifest):
        shown = shown_chunks(rec)
        flags = [cid in set(rec.get("oracle_ids") or []) for cid in shown]
        if any(flags) and not all(flags):
            out.append((rec["question"], [pair_text(c) for c in shown.values()], flags))
    return out
