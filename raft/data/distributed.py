"""Teacher answers through Ray Data, with the same teacher, seeds and checks as an in-process `raft build`.

`raft build --ray` (build.ray=true) answers its questions here: every question whose answer the teacher
cache cannot give is sent, as a row, through a pool of `ray_actors` actors that each hold one teacher and
answer their batch concurrently (teacher.concurrency in flight), retrying as the builder does. Each row
comes back with every attempt's completion (or request error). The build then replays those attempts
through its own loop (Builder.answer with a RecordedTeacher): the completions land in the teacher cache,
the checks and drop counts are the in-process ones, and so are the records, for the same seed and teacher.
Questions, splits, mixing and export stay on the driver (cheap next to generation).

The library entry point works on any Ray Dataset of questions:

    import ray
    from raft.data.distributed import answer_with_ray_data
    ds = ray.data.read_json("questions_with_oracles.jsonl")   # rows: {key, question, oracle_texts, hint}
    out = answer_with_ray_data(ds, BuildConfig(...), num_actors=8)
    out.write_json("answers/")   # rows + cot, final_answer, drop_reason, attempts, teacher_stats

For vllm_offline, give each actor a GPU (`num_gpus=1`; the build does so itself). Ray is the cluster named
by $RAY_ADDRESS when set (Ray Data starts or joins it on first use), else a local one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from raft.data.config import BuildConfig
from raft.data.generation import check_answer
from raft.data.mixing import sub_seed
from raft.prompt import extract_answer

if TYPE_CHECKING:
    from raft.data.builder import Builder, Item


def _seeds(cfg: BuildConfig, key: str) -> list[int]:
    """Per-attempt sampling seeds, as Builder.answer_seed derives them (rows without `seeds`)."""
    return [sub_seed(cfg.seed, "a", key, a) % (2 ** 31) for a in range(cfg.max_attempts)]


class AnswerBatch:
    """Ray Data callable class: one teacher per actor, answers a numpy batch of question rows.

    Optional columns: `key` (seeds derive from it, as in the builder; else from the question), `seeds`
    (one per attempt) and `start_attempt` (the first attempt to make; earlier ones came from a cache)."""

    def __init__(self, cfg_json: dict):
        from raft.data.teachers import make_teacher

        self.cfg = BuildConfig.model_validate(cfg_json)
        self.teacher = make_teacher(self.cfg.teacher)
        # one loop for the actor's life: the teacher's HTTP session and semaphore are bound to the loop
        # that first used them, so a fresh asyncio.run per batch would break the second batch
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()

    async def _one(self, question: str, texts: list[str], hint: str | None, seeds: Sequence[int],
                   start: int) -> dict[str, Any]:
        from raft.data.teachers import TeacherRequestError

        reason, attempts = "no_attempt", []
        for attempt in range(start, self.cfg.max_attempts):
            try:
                c = await self.teacher.answer(question, texts, self.cfg.mode, hint, int(seeds[attempt]))
            except TeacherRequestError as e:
                reason = f"teacher_{e.reason}"
                attempts.append({"error": e.reason})
                continue
            attempts.append({"completion": c.to_dict()})
            reason, _ = check_answer(c.text, texts, c.finish_reason, self.cfg.mode)
            if reason is None:
                return {"cot": c.text.strip(), "final_answer": extract_answer(c.text), "drop_reason": "",
                        "attempts": json.dumps(attempts)}
        return {"cot": "", "final_answer": "", "drop_reason": reason, "attempts": json.dumps(attempts)}

    def _stats(self) -> dict[str, Any]:
        st = self.teacher.stats
        return {"requests": st.requests, "retries": st.retries, "prompt_tokens": st.prompt_tokens,
                "completion_tokens": st.completion_tokens, "errors": dict(st.errors), "filtered": dict(st.filtered)}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["question"])
        hints = batch.get("hint", [None] * n)
        keys = batch.get("key", batch["question"])
        seeds = batch.get("seeds", [_seeds(self.cfg, str(k)) for k in keys])
        starts = batch.get("start_attempt", [0] * n)

        async def run():
            return await asyncio.gather(*(
                self._one(str(batch["question"][i]), [str(t) for t in batch["oracle_texts"][i]],
                          str(hints[i]) if hints[i] else None, seeds[i], int(starts[i])) for i in range(n)))

        with self.lock:  # Ray Data may call from several threads; the loop runs one batch at a time
            before = self._stats()
            results = self.loop.run_until_complete(run())
            after = self._stats()
        out = {k: list(v) for k, v in batch.items()}
        for key in ("cot", "final_answer", "drop_reason", "attempts"):
            out[key] = [r[key] for r in results]
        # what this batch cost the teacher, on its first row (requests of concurrent rows cannot be told
        # apart): summing the column over all rows gives the whole run's figures
        delta = {k: (dict(Counter(after[k]) - Counter(before[k])) if isinstance(after[k], dict) else after[k] - before[k])
                 for k in after}
        out["teacher_stats"] = [json.dumps(delta)] + [""] * (n - 1)
        return out


def answer_with_ray_data(ds, cfg: BuildConfig, num_actors: int = 2, batch_size: int = 64, num_gpus: float = 0):
    """Map a Ray Dataset of {question, oracle_texts, hint?, key?} rows through AnswerBatch actors."""
    import ray

    return ds.map_batches(AnswerBatch, fn_constructor_kwargs={"cfg_json": cfg.model_dump(mode="json")},
                          batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_actors),
                          num_gpus=num_gpus or None, batch_format="numpy")


class RecordedTeacher:
    """Stands in for the build's teacher while Builder.answer replays the attempts made on Ray: each call
    returns (or raises) what the actor got for the same question, oracle texts, hint and seed."""

    def __init__(self, teacher, recorded: dict[tuple, dict]):
        self.teacher = teacher
        self.recorded = recorded

    def signature(self) -> dict[str, Any]:
        return self.teacher.signature()

    async def answer(self, question: str, oracle_texts: Sequence[str], mode: str, hint: str | None = None,
                     seed: int | None = None):
        from raft.data.teachers import Completion, TeacherRequestError

        got = self.recorded.get((question, tuple(oracle_texts), hint or "", seed))
        if got is None:  # the replay asked for an attempt the actor did not make: a bug, never silent
            raise RuntimeError(f"no answer was recorded on Ray for {question!r} (seed {seed})")
        if "error" in got:
            raise TeacherRequestError(got["error"])
        return Completion(**got["completion"])


def pending_rows(builder: Builder, items: Sequence[Item], texts_of: dict[str, list[str]]) -> list[dict]:
    """Rows for the questions the teacher cache cannot answer, each from its first uncached attempt (an
    attempt whose cached completion passes the checks ends the question, as it does in Builder.answer)."""
    cfg, rows = builder.cfg, []
    for it in items:
        texts = texts_of[it.key]
        for attempt in range(cfg.max_attempts):
            hit = builder.cache.get(builder.cache_key("answer", builder.answer_parts(it, texts, attempt)))
            if hit is None:
                rows.append({"key": it.key, "question": it.question, "oracle_texts": texts, "hint": it.hint or "",
                             "seeds": [builder.answer_seed(it, a) for a in range(cfg.max_attempts)],
                             "start_attempt": attempt})
                break
            if check_answer(hit["text"], texts, hit.get("finish_reason"), cfg.mode)[0] is None:
                break
    return rows


def answer_on_ray(builder: Builder, items: Sequence[Item], texts_of: dict[str, list[str]]):
    """Answer what the cache lacks on Ray Data; (RecordedTeacher for Builder.answer, stats for the summary).
    The actors' teacher statistics (requests, retries, tokens, errors) are added to the build teacher's."""
    cfg = builder.cfg
    rows = pending_rows(builder, items, texts_of)
    stats: dict[str, Any] = {"actors": cfg.ray_actors, "questions_sent": len(rows), "address": None}
    recorded: dict[tuple, dict] = {}
    if not rows:  # everything is in the cache: no cluster needed
        return RecordedTeacher(builder.teacher, recorded), stats
    import ray
    import ray.data  # before the level below: importing it configures its loggers

    gpus = 1 if cfg.teacher.kind == "vllm_offline" else 0
    log = logging.getLogger("ray.data")
    level = log.level
    if not cfg.progress:  # --quiet: no Ray Data progress lines either (its warnings still show)
        log.setLevel(logging.WARNING)
    try:
        out = answer_with_ray_data(ray.data.from_items(rows), cfg, num_actors=cfg.ray_actors,
                                   batch_size=cfg.ray_batch_size, num_gpus=gpus).take_all()
    finally:
        log.setLevel(level)
    stats["address"] = ray.get_runtime_context().gcs_address
    st = builder.teacher.stats
    for r in out:
        for i, got in enumerate(json.loads(r["attempts"])):
            seed = int(r["seeds"][int(r["start_attempt"]) + i])
            recorded[(str(r["question"]), tuple(str(t) for t in r["oracle_texts"]), str(r["hint"]), seed)] = got
        if r["teacher_stats"]:
            d = json.loads(r["teacher_stats"])
            st.requests += d["requests"]
            st.retries += d["retries"]
            st.prompt_tokens += d["prompt_tokens"]
            st.completion_tokens += d["completion_tokens"]
            st.errors.update(d["errors"])
            st.filtered.update(d["filtered"])
    return RecordedTeacher(builder.teacher, recorded), stats
