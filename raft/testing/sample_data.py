"""Small synthetic RAFT datasets in the `raft build` output layout, for tests, benchmarks and smoke runs.

Each record shows an oracle paragraph among distractor paragraphs of the corpus; the answer quotes the oracle's
first sentence and ends with a short answer, so even a tiny random model has a pattern to learn (the RAFT
answer format, and copying from the right document).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from raft.prompt import cot_answer, render_user


def paragraphs(corpus_dir: str | Path) -> list[dict[str, str]]:
    out = []
    for f in sorted(Path(corpus_dir).glob("*.md")):
        title = f.stem.replace("_", " ")
        for para in f.read_text(encoding="utf-8").split("\n\n"):
            para = para.strip()
            if para and not para.startswith("#"):
                out.append({"title": title, "text": para, "id": f"{f.stem}-{len(out)}"})
    return out


def make_records(corpus_dir: str | Path, n: int, seed: int = 0, docs_min: int = 1, docs_max: int = 4,
                 split: str = "train") -> list[dict]:
    rng = random.Random(seed)
    paras = paragraphs(corpus_dir)
    recs = []
    for i in range(n):
        oracle = rng.choice(paras)
        k = rng.randint(docs_min, docs_max)
        shown = [oracle] + rng.sample([p for p in paras if p is not oracle], k - 1)
        rng.shuffle(shown)
        first = oracle["text"].split(". ")[0].rstrip(".") + "."
        words = [w.strip(".,") for w in first.split() if len(w.strip(".,")) > 3]
        question = f"What does the document about {oracle['title']} say first?"
        answer = cot_answer(f"The document titled {oracle['title']} says:", [first], " ".join(words[-2:]))
        docs = [{"title": d["title"], "text": d["text"]} for d in shown]
        recs.append({
            "id": f"{split}-{i}", "type": "general", "question": question,
            "context": {"title": [[d["title"] for d in shown]], "sentences": [[d["text"] for d in shown]]},
            "oracle_context": oracle["text"], "cot_answer": answer,
            "instruction": render_user(question, docs), "doc_ids": [d["id"] for d in shown],
            "oracle_ids": [oracle["id"]], "oracle_included": True, "final_answer": " ".join(words[-2:]),
            "split": split})
    return recs


def write_dataset(out: str | Path, corpus_dir: str | Path, n_train: int = 48, n_val: int = 8, seed: int = 0,
                  **kw) -> Path:
    out = Path(out)
    (out / "raft").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n, s in (("train", n_train, seed), ("validation", n_val, seed + 1)):
        recs = make_records(corpus_dir, n, seed=s, split=split, **kw)
        (out / "raft" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        counts[split] = n
    (out / "manifest.json").write_text(json.dumps({"formats": ["raft"], "splits": list(counts), "counts": counts,
                                                   "prompt_version": "raft-prompt-v1",
                                                   "fingerprint": f"synthetic-{seed}-{n_train}-{n_val}"}))
    return out
