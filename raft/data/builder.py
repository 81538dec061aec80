"""The RAFT dataset build: index -> questions -> verified answers -> splits -> distractor mixing -> export.

Every teacher call goes through the content-addressed cache (raft/data/cache.py) and every random choice
is seeded per item, so re-running a killed build repeats no teacher call and writes the same dataset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft.data.cache import TeacherCache, cache_key
from raft.data.config import BuildConfig
from raft.data.generation import QUESTION_SYSTEM, answer_messages, check_answer, parse_questions
from raft.data.mixing import (MineItem, choose_oracle_included, count_shown, distractor_count, mine_distractors,
                              shown_order, sub_seed)
from raft.data.progress import Progress
from raft.data.questions_file import best_chunks, load_questions
from raft.data.splits import assign_splits, doc_groups
from raft.data.teachers import ChatTeacher, Completion, TeacherRequestError, make_teacher
from raft.errors import RaftError
from raft.prompt import PROMPT_VERSION, extract_answer, extract_quotes, render_user

# Part of every cache key: bump when the teacher prompts or their parsing change meaning.
TEACHER_PROMPT_HASH = hashlib.sha256(
    (json.dumps(QUESTION_SYSTEM, sort_keys=True) + json.dumps(answer_messages("q", ["c"], "general", "h"))
     + json.dumps(answer_messages("q", ["c"], "api"))).encode()).hexdigest()[:12]


class EmptyDatasetError(RaftError):
    """A build whose every question was dropped; `summary` holds the counts (what each stage dropped)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


@dataclass
class Item:
    """One question on its way to becoming a record."""

    key: str
    question: str
    oracle_ids: list[str]
    gold_ids: list[str]
    answers: list[str] = field(default_factory=list)
    hint: str | None = None
    cot: str = ""
    final_answer: str = ""
    split: str = ""


def _corpus_fingerprint(corpus: Path) -> str:
    h = hashlib.sha256()
    files = [corpus] if corpus.is_file() else sorted(p for p in corpus.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(corpus) if p != corpus else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def open_or_build_index(corpus: Path | None, out: Path, cfg: BuildConfig, console=None, skipped: list | None = None):
    """The index to mine from: cfg.index_dir as is, else OUT/index, rebuilt when the corpus or the index
    settings changed since it was built (or when a killed run left it half written). The corpus files the
    index build skipped (path, reason) are appended to `skipped`, also when the index is reused."""
    from retrieval.index import RetrievalIndex

    skipped = skipped if skipped is not None else []
    if cfg.index_dir:
        return RetrievalIndex.open(cfg.index_dir)
    if corpus is None:
        raise RaftError("give a CORPUS path, or build.index_dir=DIR to reuse an existing index")
    if not corpus.exists():
        raise RaftError(f"corpus {str(corpus)!r} does not exist")
    idx_dir = out / "index"
    stamp_path = out / "index.source.json"
    stamp = {"corpus": str(corpus.resolve()), "fingerprint": _corpus_fingerprint(corpus),
             "index": cfg.index.model_dump(mode="json")}
    if idx_dir.exists() and stamp_path.exists():
        try:
            saved = json.loads(stamp_path.read_text())
            if {k: v for k, v in saved.items() if k != "skipped"} == stamp:
                idx = RetrievalIndex.open(idx_dir)
                skipped += [tuple(x) for x in saved.get("skipped", [])]
                return idx
        except Exception:  # half-written or stale: rebuild below
            pass
    shutil.rmtree(idx_dir, ignore_errors=True)
    stamp_path.unlink(missing_ok=True)
    if console:
        console.print(f"indexing {corpus} -> {idx_dir}")
    idx = RetrievalIndex.build(corpus, idx_dir, cfg.index)
    skipped += idx.build_summary.get("skipped", [])
    stamp_path.write_text(json.dumps(stamp | {"skipped": idx.build_summary.get("skipped", [])}))
    return idx


class Builder:
    def __init__(self, cfg: BuildConfig, out: str | Path, corpus: str | Path | None = None, index=None,
                 teacher: ChatTeacher | None = None, console=None):
        self.cfg = cfg
        self.out = Path(out)
        self.corpus = Path(corpus) if corpus else None
        self.index = index
        self.teacher = teacher
        self.console = console
        self.drops: Counter = Counter()      # answers dropped, final reason per question
        self.mix_drops: Counter = Counter()  # answered questions dropped while mixing, by reason
        self.attempt_fails: Counter = Counter()  # every failed attempt, by reason
        self.q_stats: Counter = Counter()
        self.quotes = Counter()
        self.calls = Counter()
        self.skipped: list[tuple[str, str]] = []  # corpus files the index build could not use
        self.missing_gold: Counter = Counter()  # gold doc ids of the questions file that the corpus lacks
        self.split_groups: Counter = Counter()  # with split.group_by: documents, groups, documents without the key
        self.ray_stats: dict = {}  # with build.ray: where the answers ran

    # -- teacher calls through the cache -------------------------------------------------------------
    def cache_key(self, kind: str, key_parts: dict) -> str:
        """The teacher cache's key of one call (see raft/data/cache.py)."""
        return cache_key(task=kind, teacher=self.teacher.signature(), prompts=TEACHER_PROMPT_HASH, **key_parts)

    async def _cached(self, kind: str, key_parts: dict, call) -> Completion:
        key = self.cache_key(kind, key_parts)
        hit = self.cache.get(key)
        if hit is not None:
            self.calls["cached"] += 1
            self.calls["cached_prompt_tokens"] += hit.get("prompt_tokens", 0)
            self.calls["cached_completion_tokens"] += hit.get("completion_tokens", 0)
            return Completion(**hit)
        c = await call()
        self.calls["teacher"] += 1
        self.cache.put(key, c.to_dict())
        return c

    def _seed(self, *parts) -> int:
        return sub_seed(self.cfg.seed, *parts) % (2 ** 31)

    # -- questions ------------------------------------------------------------------------------------
    async def _questions_for_chunk(self, chunk) -> list[Item]:
        n, mode = self.cfg.questions_per_chunk, self.cfg.mode
        got: list[str] = []
        for attempt in range(self.cfg.max_attempts):
            try:
                c = await self._cached("questions", {"chunk": chunk.text, "n": n, "mode": mode, "attempt": attempt},
                                       lambda: self.teacher.questions(chunk.text, n, mode,
                                                                      self._seed("q", chunk.chunk_id, attempt)))
            except TeacherRequestError as e:
                self.q_stats[f"teacher_{e.reason}"] += 1
                continue
            seen = {q.lower() for q in got}
            got += [q for q in parse_questions(c.text, n) if q.lower() not in seen][:n - len(got)]
            if len(got) >= n:
                break
            self.q_stats["short_or_unparseable_output"] += 1
        if not got:
            self.q_stats["chunks_without_questions"] += 1
        return [Item(hashlib.sha1(f"{chunk.chunk_id}\0{i}\0{q}".encode()).hexdigest()[:16], q, [chunk.chunk_id],
                     [chunk.doc_id]) for i, q in enumerate(got)]

    def _items_from_file(self, chunks_by_id: dict) -> list[Item]:
        items = []
        for q in self.given:
            oracle, missing = [], []
            for d in q.gold_ids:
                cands = [c for c in self.index.chunks_for_doc(d) if c.chunk_id in chunks_by_id]
                (oracle.extend(best_chunks(cands, q.question, q.answers)) if cands else missing.append(d))
            self.missing_gold.update(missing)
            if missing or not oracle:
                self.drops["gold_doc_not_in_corpus" if q.gold_ids else "no_gold_ids"] += 1
                continue
            hint = q.answers[0] if (self.cfg.answer_hint and q.answers) else None
            items.append(Item(q.id, q.question, list(dict.fromkeys(c.chunk_id for c in oracle)), list(q.gold_ids),
                              list(q.answers), hint))
        return items

    # -- answers --------------------------------------------------------------------------------------
    def answer_parts(self, item: Item, texts: list[str], attempt: int) -> dict:
        """What determines one answer call besides the teacher (its cache key parts)."""
        return {"question": item.question, "oracle": texts, "mode": self.cfg.mode, "hint": item.hint,
                "attempt": attempt}

    def answer_seed(self, item: Item, attempt: int) -> int:
        """The sampling seed of one answer call: from the build seed, the question's key and the attempt."""
        return self._seed("a", item.key, attempt)

    async def answer(self, item: Item, texts: list[str], teacher: ChatTeacher | None = None) -> bool:
        """Ask the teacher for a chain-of-thought answer to `item` from the oracle `texts`, retried up to
        max_attempts until its quotes check out; True when kept (item.cot and item.final_answer are set).
        Needs `self.teacher` and `self.cache` (run() sets both up); `teacher` stands in for self.teacher's
        calls (not its cache key), e.g. the replay of answers made on Ray (raft/data/distributed.py)."""
        teacher = teacher or self.teacher
        reason = "no_attempt"
        for attempt in range(self.cfg.max_attempts):
            parts = self.answer_parts(item, texts, attempt)
            try:
                c = await self._cached("answer", parts, lambda: teacher.answer(
                    item.question, texts, self.cfg.mode, item.hint, self.answer_seed(item, attempt)))
            except TeacherRequestError as e:
                reason = f"teacher_{e.reason}"
                self.attempt_fails[reason] += 1
                continue
            reason, info = check_answer(c.text, texts, c.finish_reason, self.cfg.mode)
            self.quotes["total"] += info["quotes"]
            self.quotes["verified"] += info["verified"]
            if reason is None:
                item.cot = c.text.strip()
                item.final_answer = extract_answer(item.cot)
                return True
            self.attempt_fails[reason] += 1
        self.drops[reason] += 1
        return False

    # -- the whole build -----------------------------------------------------------------------------
    def run(self) -> dict:
        try:  # uvloop (a Ray/uvicorn dependency) cuts the event loop's cost per request
            import uvloop
        except ImportError:
            return asyncio.run(self._run())
        return uvloop.run(self._run())

    async def _run(self) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        # the questions file is read before the (slow) indexing, so its mistakes cost seconds
        self.given = load_questions(cfg.questions_file) if cfg.questions_file else []
        if cfg.questions_file and not any(q.gold_ids for q in self.given):
            raise RaftError(f"questions file {cfg.questions_file}: " + (
                "holds no questions" if not self.given else
                f"none of its {len(self.given)} question(s) has `gold_ids`") + "; each line needs {id, question, "
                "answers, gold_ids} where gold_ids are the ids of the corpus documents that answer it (a file's "
                "path relative to the corpus directory, e.g. \"history.md\")")
        if self.teacher is None:
            self.teacher = make_teacher(cfg.teacher)
        try:
            # before indexing: an unreachable teacher fails in seconds, not minutes
            for warning in await self.teacher.check() or []:
                self._warn(warning)
            all_chunks, chunks, by_id = self._corpus_chunks()
            empty = len(all_chunks) - len(chunks)
            self.cache = TeacherCache(self.out / ".cache" / "teacher.sqlite")
            try:
                with Progress(enabled=cfg.progress, console=self.console) as prog:
                    items = await self._gather_items(chunks, by_id, prog)
                    kept = await self._gather_answers(items, by_id, prog)
                    records, mix_stats = self._mix(kept, chunks, by_id, prog)
            finally:
                self.cache.close()
        finally:
            await self.teacher.aclose()
        summary = self._summary(t0, all_chunks, empty, items, kept, records, mix_stats)
        if not records:  # an empty dataset is no result: say which stage dropped everything, write nothing
            raise EmptyDatasetError(
                "the build produced 0 records: " + self._why_empty(items, kept)
                + f" (the teacher cache in {self.out / '.cache'} is kept: a rerun repeats no teacher call)", summary)
        from raft.data.export import write_dataset

        by_split: dict[str, list[dict]] = {}
        for r in records:
            by_split.setdefault(r["split"], []).append(r)
        write_dataset(self.out, by_split, cfg.formats, cfg.model_dump(mode="json"), summary)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return summary

    def _corpus_chunks(self) -> tuple[list, list, dict]:
        """Every chunk of the index (built or reused), the non-empty ones, and those by id."""
        D = self.cfg.mix.num_distractors
        self.out.mkdir(parents=True, exist_ok=True)
        if self.index is None:
            self.index = open_or_build_index(self.corpus, self.out, self.cfg, self.console, self.skipped)
        ids = sorted(self.index.chunk_ids())
        all_chunks = [c for i in range(0, len(ids), 4096) for c in self.index.get(ids[i:i + 4096])]
        chunks = [c for c in all_chunks if c.text and c.text.strip()]
        if len(chunks) < D + 1:
            raise RaftError(f"the corpus has {len(chunks)} non-empty chunk(s) but num_distractors={D} needs at "
                            f"least {D + 1} (the oracle plus {D} distinct distractors); add documents or lower "
                            f"build.mix.num_distractors")
        return all_chunks, chunks, {c.chunk_id: c for c in chunks}

    async def _gather_items(self, chunks, by_id, prog) -> list[Item]:
        if self.cfg.questions_file:
            return self._items_from_file(by_id)
        pick = list(chunks)
        if self.cfg.max_chunks and self.cfg.max_chunks < len(pick):
            pick = sorted(random.Random(self._seed("chunks")).sample(pick, self.cfg.max_chunks),
                          key=lambda c: c.chunk_id)
        self.q_stats["chunks_asked"] = len(pick)
        task = prog.add("questions (chunks)", len(pick))

        async def one(c):
            r = await self._questions_for_chunk(c)
            prog.advance(task)
            return r

        return [it for group in await asyncio.gather(*(one(c) for c in pick)) for it in group]

    async def _gather_answers(self, items: list[Item], by_id, prog) -> list[Item]:
        task = prog.add("answers", len(items))
        texts_of = {it.key: [by_id[o].text for o in it.oracle_ids] for it in items}
        teacher = None
        if self.cfg.ray:  # the calls run on Ray; the loop below replays them through the cache and the checks
            from raft.data.distributed import answer_on_ray

            # blocking on purpose: nothing else runs in this loop now, and the cache is used from this thread
            teacher, self.ray_stats = answer_on_ray(self, items, texts_of)

        async def one(it: Item):
            ok = await self.answer(it, texts_of[it.key], teacher)
            prog.advance(task)
            return ok

        oks = await asyncio.gather(*(one(it) for it in items))
        return [it for it, ok in zip(items, oks) if ok]

    def _mix(self, kept: list[Item], chunks, by_id, prog) -> tuple[list[dict], Counter]:
        cfg = self.cfg
        groups = None
        if cfg.split.group_by:
            groups, self.split_groups = doc_groups(chunks, cfg.split.group_by)
        doc_split = assign_splits((c.doc_id for c in chunks), [[by_id[o].doc_id for o in it.oracle_ids]
                                                               for it in kept], cfg.split, cfg.seed, groups)
        for it in kept:
            it.split = doc_split[by_id[it.oracle_ids[0]].doc_id]
        task = prog.add("mining distractors", len(kept))
        # with a questions file, no chunk of a gold document is a distractor (it may hold a supporting fact)
        gold_docs = (lambda it: it.gold_ids) if cfg.questions_file else (lambda it: [])
        mined = mine_distractors(self.index, [MineItem(it.key, it.question, it.oracle_ids,
                                                       [it.final_answer] + it.answers, it.split, gold_docs(it))
                                              for it in kept],
                                 sorted(by_id), cfg.mix, cfg.seed, doc_split,
                                 progress=lambda n: prog.advance(task, n))
        stats = mined.stats
        usable = [it for it in kept if it.key in mined.distractors]
        if len(kept) > len(usable):
            self.mix_drops["too_few_distractors"] += len(kept) - len(usable)
        keys_by_split: dict[str, list[str]] = {}
        for it in usable:
            keys_by_split.setdefault(it.split, []).append(it.key)
        included = choose_oracle_included(keys_by_split, cfg.mix.p_oracle, cfg.seed)
        records = []
        for it in sorted(usable, key=lambda it: it.key):
            inc = it.key in included
            shown = shown_order(it.key, it.oracle_ids, mined.distractors[it.key], inc,
                                distractor_count(it.key, cfg.mix, cfg.seed), cfg.seed)
            count_shown(shown, it.oracle_ids, mined.hard[it.key], stats)
            records.append(self._record(it, shown, inc, by_id))
        stats["oracle_included"] = len(included)
        stats["records"] = len(records)
        return records, stats

    def _record(self, it: Item, shown: list[str], included: bool, by_id) -> dict[str, Any]:
        docs = [by_id[c] for c in shown]
        titles = [d.title or "placeholder_title" for d in docs]
        shown_docs = [{"title": d.title or "", "text": d.text} for d in docs]
        oracle = [by_id[o] for o in it.oracle_ids]
        return {
            "id": it.key, "type": self.cfg.mode, "question": it.question,
            "context": {"title": [titles], "sentences": [[d.text for d in docs]]},
            "oracle_context": "\n\n".join(o.text for o in oracle),
            "cot_answer": it.cot, "instruction": render_user(it.question, shown_docs),
            "doc_ids": shown, "oracle_ids": list(it.oracle_ids), "oracle_included": included,
            "oracle_positions": [i for i, c in enumerate(shown) if c in set(it.oracle_ids)],
            "final_answer": it.final_answer, "quotes_verified": True,
            "num_quotes": len(extract_quotes(it.cot)),
            "source": oracle[0].source or oracle[0].doc_id, "teacher": self.teacher.name, "split": it.split,
            "answers": it.answers or [it.final_answer], "gold_ids": it.gold_ids,
        }

    def _warn(self, message: str) -> None:
        """Printed at once (not only in the summary): it may explain a build that is about to fail."""
        if self.console is not None:
            self.console.print("warning: " + message, highlight=False, markup=False)
        else:
            print("warning: " + message, file=sys.stderr)

    def _teacher_label(self) -> str:
        """'the extractive teacher' / 'the openai teacher (model M)': which teacher ran, and with which model."""
        t = self.teacher
        return (f"the {t.kind} teacher" if t.kind == "extractive" or not t.name
                else f"the {t.kind} teacher (model {t.name})")

    def _why_empty(self, items: list[Item], kept: list[Item]) -> str:
        """Which filter dropped every question, and what to do about it."""
        def reasons(c: Counter) -> str:
            return ", ".join(f"{k}={v}" for k, v in c.most_common())

        if self.cfg.questions_file and not items:
            n = len(self.given)
            if self.missing_gold:
                doc_ids = getattr(self.index, "doc_ids", None)
                sample = sorted(doc_ids())[:5] if doc_ids else []
                return (f"none of the {n} question(s) of {self.cfg.questions_file} could be used ({reasons(self.drops)}); "
                        f"gold ids not in the corpus: {', '.join(repr(d) for d, _ in self.missing_gold.most_common(5))}"
                        f"{' ...' if len(self.missing_gold) > 5 else ''}; the corpus's document ids look like "
                        f"{', '.join(repr(d) for d in sample)}")
            return f"none of the {n} question(s) of {self.cfg.questions_file} could be used ({reasons(self.drops)})"
        if not items:
            return (f"{self._teacher_label()} wrote no usable question for any of the "
                    f"{self.q_stats.get('chunks_asked', 0)} chunks ({reasons(self.q_stats)}); check teacher.model "
                    "and teacher.base_url, or give your own questions with --questions FILE")
        if not kept:
            return (f"all {len(items)} answers were dropped by the answer checks "
                    f"(final reasons: {reasons(self.drops)}; every failed attempt: {reasons(self.attempt_fails)}): "
                    f"{self._teacher_label()} must quote the passage between ##begin_quote## and "
                    "##end_quote## and end with <ANSWER>: ...; try a stronger teacher model")
        return (f"all {len(kept)} answered questions were dropped while mixing distractors "
                f"({reasons(self.mix_drops)}); "
                "lower build.mix.num_distractors or set build.mix.within_split=false")

    def _summary(self, t0, all_chunks, empty, items, kept, records, mix_stats) -> dict:
        st = self.teacher.stats
        total_q = self.quotes["total"]
        splits = Counter(r["split"] for r in records)
        return {
            "out": str(self.out), "corpus": str(self.corpus) if self.corpus else None,
            "prompt_version": PROMPT_VERSION, "teacher": {"kind": self.teacher.kind, "model": self.teacher.name},
            "chunks": {"total": len(all_chunks), "empty_skipped": empty},
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            # from a file, every question given: those whose gold documents are missing are counted in
            # answers.dropped, so that kept + dropped = count either way
            "questions": {"source": "file" if self.cfg.questions_file else "teacher",
                          "count": len(self.given) if self.cfg.questions_file else len(items),
                          **dict(self.q_stats)},
            **({"ray": self.ray_stats} if self.ray_stats else {}),
            "answers": {"kept": len(kept), "dropped": sum(self.drops.values()),
                        "dropped_by_reason": dict(self.drops), "failed_attempts_by_reason": dict(self.attempt_fails),
                        "quotes_total": total_q, "quotes_verified": self.quotes["verified"],
                        "quote_verification_rate": round(self.quotes["verified"] / total_q, 4) if total_q else None},
            # answered questions that mixing dropped: not in `answers` (kept - mixing.dropped = records)
            "mixing": {**mix_stats, "dropped": sum(self.mix_drops.values()),
                       "dropped_by_reason": dict(self.mix_drops)},
            "records": len(records), "splits": dict(splits),
            **({"split_groups": {"group_by": self.cfg.split.group_by, **self.split_groups}}
               if self.cfg.split.group_by else {}),
            "tokens": {"prompt": st.prompt_tokens, "completion": st.completion_tokens,
                       "cached_prompt": self.calls["cached_prompt_tokens"],
                       "cached_completion": self.calls["cached_completion_tokens"]},
            "teacher_calls": {"made": self.calls["teacher"], "from_cache": self.calls["cached"],
                              "http_requests": st.requests, "retries": st.retries,
                              "failed_requests": dict(st.errors),
                              "filtered": dict(st.filtered)},  # replies the teacher's own checks rejected
            "seconds": round(time.perf_counter() - t0, 2),
        }
