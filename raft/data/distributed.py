"""Beyond one machine: teacher answers through Ray Data, with the same teacher and checks as `raft build`.

`raft build` itself runs one async process (hundreds of requests in flight are plenty for one endpoint).
When the corpus is too large for one machine, or the teacher is vLLM offline on several GPUs, map batches
of questions through a pool of actors, each holding one teacher:

    import ray
    from raft.data.distributed import answer_with_ray_data
    ds = ray.data.read_json("questions_with_oracles.jsonl")   # rows: {key, question, oracle_texts, hint}
    out = answer_with_ray_data(ds, BuildConfig(...), num_actors=8)   # rows + cot, final_answer, drop_reason
    out.write_json("answers/")

Each actor answers its batch concurrently (teacher.concurrency in flight), retries as the builder does and
returns the verified answer or the drop reason. Mixing, splits and export then run on one machine over the
answered rows (they are cheap next to generation). For vllm_offline, give each actor a GPU
(`num_gpus=1`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from raft.data.config import BuildConfig
from raft.data.generation import check_answer
from raft.prompt import extract_answer


class AnswerBatch:
    """Ray Data callable class: one teacher per actor, answers a pandas/dict batch of questions."""

    def __init__(self, cfg_json: dict):
        from raft.data.teachers import make_teacher

        self.cfg = BuildConfig.model_validate(cfg_json)
        self.teacher = make_teacher(self.cfg.teacher)

    async def _one(self, question: str, texts: list[str], hint: str | None, seed: int) -> dict[str, Any]:
        from raft.data.teachers import TeacherRequestError

        reason = "no_attempt"
        for attempt in range(self.cfg.max_attempts):
            try:
                c = await self.teacher.answer(question, texts, self.cfg.mode, hint, seed + attempt)
            except TeacherRequestError as e:
                reason = f"teacher_{e.reason}"
                continue
            reason, _ = check_answer(c.text, texts, c.finish_reason, self.cfg.mode)
            if reason is None:
                return {"cot": c.text.strip(), "final_answer": extract_answer(c.text), "drop_reason": ""}
        return {"cot": "", "final_answer": "", "drop_reason": reason}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["question"])
        hints = batch.get("hint", [None] * n)

        async def run():
            return await asyncio.gather(*(self._one(str(batch["question"][i]), [str(t) for t in batch["oracle_texts"][i]],
                                                    hints[i] or None, i) for i in range(n)))

        results = asyncio.run(run())
        out = {k: list(v) for k, v in batch.items()}
        for key in ("cot", "final_answer", "drop_reason"):
            out[key] = [r[key] for r in results]
        return out


def answer_with_ray_data(ds, cfg: BuildConfig, num_actors: int = 2, batch_size: int = 64, num_gpus: float = 0):
    """Map a Ray Dataset of {question, oracle_texts, hint?} rows through AnswerBatch actors."""
    return ds.map_batches(AnswerBatch, fn_constructor_kwargs={"cfg_json": cfg.model_dump(mode="json")},
                          batch_size=batch_size, concurrency=num_actors, num_gpus=num_gpus or None,
                          batch_format="numpy")
