"""Write the dataset directory (CONTRACTS.md "Dataset directory"): raft/chat/completion/eval JSONL (+ Parquet for
raft), the HF DatasetDict, manifest.json (written last), build_summary.json and a dataset card.

Every file is written to a temporary name and renamed, so a killed export never leaves a half file that
looks finished; the manifest is written last and is the mark of a complete dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from raft.prompt import PROMPT_VERSION, completion_prompt, docs_from_record, messages_from_record

SPLITS = ("train", "validation", "test")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    _write_text(path, "".join(_dumps(r) + "\n" for r in rows))


def format_rows(fmt: str, records: Sequence[dict]) -> list[dict]:
    """Rows of one export format for RAFT records (all rendering via raft.prompt)."""
    if fmt == "raft":
        return list(records)
    if fmt == "chat":
        return [{"id": r["id"], "messages": messages_from_record(r)} for r in records]
    if fmt == "completion":
        return [{"id": r["id"], "prompt": completion_prompt(r["question"], docs_from_record(r)),
                 "completion": " " + r["cot_answer"]} for r in records]
    if fmt == "eval":
        return [{"id": r["id"], "question": r["question"], "answers": r["answers"], "gold_ids": r["gold_ids"],
                 "doc_ids": r["doc_ids"], "oracle_ids": r["oracle_ids"]} for r in records]
    raise ValueError(f"unknown format {fmt!r}")


def fingerprint(by_split: dict[str, list[dict]]) -> str:
    h = hashlib.sha256(PROMPT_VERSION.encode())
    for s in SPLITS:
        for r in by_split.get(s, []):
            h.update(_dumps(r).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()[:16]


def write_dataset(out: Path, by_split: dict[str, list[dict]], formats: Sequence[str], config: dict,
                  summary: dict) -> dict:
    """Write everything; returns the manifest."""
    out = Path(out)
    splits = [s for s in SPLITS if by_split.get(s)]
    internal = {"answers", "gold_ids"}  # carried for the eval format, not part of the RAFT record
    records = {s: [{k: v for k, v in r.items() if k not in internal} for r in by_split[s]] for s in splits}
    for fmt in formats:
        for s in SPLITS:  # remove files of splits that are now empty (a rebuild with other ratios)
            for ext in (".jsonl", ".parquet"):
                (out / fmt / f"{s}{ext}").unlink(missing_ok=True)
        for s in splits:
            _write_jsonl(out / fmt / f"{s}.jsonl", format_rows(fmt, records[s] if fmt == "raft" else by_split[s]))
    if "raft" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for s in splits:
            path = out / "raft" / f"{s}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            pq.write_table(pa.Table.from_pylist(records[s]), tmp)
            os.replace(tmp, path)
    _write_hf(out / "hf", records)
    fp = fingerprint(records)
    manifest = {"formats": list(formats), "splits": splits, "counts": {s: len(records[s]) for s in splits},
                "prompt_version": PROMPT_VERSION, "fingerprint": fp}
    summary = dict(summary, fingerprint=fp)
    _write_text(out / "build_summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_text(out / "README.md", dataset_card(config, summary, manifest))
    _write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_hf(path: Path, records: dict[str, list[dict]]) -> None:
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # our own progress/summary is enough; HF's bars clutter the build log

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict({s: Dataset.from_list(r) for s, r in records.items()}).save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _distractors(mix: dict) -> str:
    lo, hi = mix.get("min_distractors"), mix["num_distractors"]
    return str(hi) if lo is None or lo == hi else f"{lo} to {hi}"


def dataset_card(config: dict, summary: dict, manifest: dict) -> str:
    teacher = config.get("teacher", {})
    smoke = ("\n> **Smoke data.** Built with the `extractive` teacher, which copies sentences instead of "
             "asking a model. It exercises the pipeline; it is not training data worth fine-tuning on.\n"
             if teacher.get("kind") == "extractive" else "")
    rows = "\n".join(f"| {s} | {n} |" for s, n in manifest["counts"].items())
    drops = summary.get("answers", {}).get("dropped_by_reason", {})
    # questions answered but dropped while mixing distractors: counted apart from the answer checks' drops
    mix_drops = summary.get("mixing", {}).get("dropped_by_reason", {})
    drop_rows = "\n".join([f"| {k} | {v} |" for k, v in sorted(drops.items())]
                          + [f"| {k} (mixing) | {v} |" for k, v in sorted(mix_drops.items())]) or "| (none) | 0 |"
    teacher_line = f"`{teacher.get('kind')}`" + (f" / `{teacher['model']}`" if teacher.get("model") else "")
    stats = {k: summary.get(k) for k in ("chunks", "questions", "answers", "mixing", "tokens", "seconds")}
    return f"""# RAFT dataset

Retrieval-augmented fine-tuning data (RAFT, Zhang et al. 2024) built by `raft build`. Each record shows a
question with {_distractors(config['mix'])} distractor chunks and, in a fraction
P={config['mix']['p_oracle']} of records, the oracle chunk(s); the answer is chain-of-thought reasoning
that quotes the oracle between `##begin_quote##` and `##end_quote##` (every quote checked against the
oracle) and ends in `<ANSWER>: ...`. Splits are by source document.
{smoke}
- prompt version: `{manifest['prompt_version']}`
- fingerprint: `{manifest['fingerprint']}`
- teacher: {teacher_line}
- formats: {', '.join(manifest['formats'])} (+ `hf/`, a `datasets.DatasetDict` saved with `save_to_disk`)

## Splits

| split | records |
|---|---|
{rows}

## Dropped answers

| reason | count |
|---|---|
{drop_rows}

## Statistics

```yaml
{yaml.safe_dump(stats, sort_keys=False).rstrip()}
```

## Config

```yaml
{yaml.safe_dump(config, sort_keys=False).rstrip()}
```
"""
