"""Run the evaluation: every system on every question (plus the top-k and distractor sweeps), async with
bounded concurrency, scoring each answer as it comes back. Returns plain dicts for the report.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from raft.errors import RaftError
from raft.eval.client import Endpoint
from raft.eval.config import EvalConfig, PriceConfig, SystemConfig
from raft.eval.data import EvalItem, document_pool, with_distractors
from raft.eval.judge import judge_score
from raft.eval.metrics import (citation_scores, exact_match, looks_like_api, mean, percentile, quote_validity,
                               quoted_doc_ids, recall_at_k, reciprocal_rank, token_f1)
from raft.eval.report import best_per_metric
from raft.eval.resume import RowKey, answer_fingerprint
from raft.prompt import ANSWER_TAG, build_messages, extract_answer


@dataclass
class RunSpec:
    """One pass of one system over the questions: its main run or one point of a sweep."""

    system: SystemConfig
    sweep: str = "main"          # "main" | "top_k" | "distractors"
    value: int | None = None     # the swept top-k or number of distractors

    @property
    def label(self) -> str:
        return self.system.name if self.sweep == "main" else f"{self.system.name} {self.sweep}={self.value}"


def plan_runs(cfg: EvalConfig, have_oracles: bool) -> list[RunSpec]:
    """Main runs first (unless sweep.only), then the sweeps the config asks for (only where they make sense)."""
    runs = [] if cfg.sweep.only else [RunSpec(s) for s in cfg.systems]
    swept = [s for s in cfg.systems if not cfg.sweep.systems or s.name in cfg.sweep.systems]
    for s in swept:
        if s.retrieval in ("gateway", "local"):
            runs += [RunSpec(s, "top_k", k) for k in cfg.sweep.top_k if k >= 1]
    if have_oracles:
        for s in swept:
            if s.retrieval != "off" or cfg.sweep.systems:
                runs += [RunSpec(s, "distractors", n) for n in cfg.sweep.distractors]
    return runs


def _gold(item: EvalItem, level: str, docs: list[dict]) -> tuple[list[str], str]:
    """Gold ids and the document key they are matched on. `auto` prefers document ids, unless the
    documents at hand carry no doc_id (RAFT records name their passages by chunk id only)."""
    if level == "doc":
        return item.gold_doc_ids, "doc_id"
    if level == "chunk":
        return item.gold_chunk_ids, "chunk_id"
    docs_have_doc_ids = not docs or any(d.get("doc_id") for d in docs)
    if item.gold_doc_ids and (docs_have_doc_ids or not item.gold_chunk_ids):
        return item.gold_doc_ids, "doc_id"
    return item.gold_chunk_ids, "chunk_id"


class Evaluator:
    """Holds endpoints, the optional local index and the judge for one `raft eval` invocation."""

    def __init__(self, cfg: EvalConfig, items: list[EvalItem], on_progress: Callable[[str, int], None] | None = None,
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 done: dict[RowKey, dict[str, Any]] | None = None):
        self.cfg, self.items = cfg, items
        self.done = done or {}  # rows of an interrupted run that `--resume` reuses instead of asking again
        self.reused = 0
        self.fingerprints = {s.name: answer_fingerprint(cfg, s) for s in cfg.systems}
        self.on_progress = on_progress or (lambda label, n: None)
        self.on_row = on_row or (lambda row: None)
        self.style = cfg.answer_style
        if self.style == "auto":
            self.style = "api" if looks_like_api(a for it in items for a in it.answers) else "text"
        self.pool = document_pool(items)
        self.endpoints = {s.name: Endpoint(s.base_url, s.model, s.api_key, timeout=cfg.timeout,
                                           retries=cfg.retries, concurrency=cfg.concurrency)
                          for s in cfg.systems}
        j = cfg.judge
        self.judge = (Endpoint(j.base_url, j.model, j.api_key, timeout=cfg.timeout, retries=cfg.retries,
                               concurrency=cfg.concurrency) if j.enabled else None)
        self.index = None
        self.reranker = None  # retrieval.rerank.Reranker, loaded for the first system that reranks locally
        self._search_cache: dict[tuple, list[list[dict]]] = {}

    # -- set-up -------------------------------------------------------------------------------------
    async def check_endpoints(self) -> dict[str, list[str]]:
        """Reachability of every endpoint at once, so a typo fails in seconds, not after a long run."""
        eps = dict(self.endpoints)
        if self.judge:
            eps["judge"] = self.judge
        listed = await asyncio.gather(*(e.check(self.cfg.connect_timeout) for e in eps.values()))
        return dict(zip(eps, listed))

    def _open_index(self):
        if self.index is None:
            from retrieval.index import RetrievalIndex

            self.index = RetrievalIndex.open(self.cfg.index, embedder=self.cfg.embedder)
        return self.index

    def _open_reranker(self):
        if self.reranker is None:
            from retrieval.rerank import Reranker

            self.reranker = Reranker.from_config(self.cfg.rerank).load()
        return self.reranker

    def local_docs(self, system: SystemConfig, k: int) -> list[list[dict]]:
        """Top-k passages per question from the local index; one batched search per (mode, filter, rerank)."""
        kmax = max([system.top_k, max(self.cfg.k_values)] + self.cfg.sweep.top_k)
        key = (system.search_mode, json.dumps(system.filter, sort_keys=True), kmax, system.rerank)
        if key not in self._search_cache:
            hits = self._open_index().search_batch([it.question for it in self.items], k=kmax,
                                                   mode=system.search_mode, filter=system.filter,
                                                   rerank=self._open_reranker() if system.rerank else None)
            self._search_cache[key] = [[{"chunk_id": h.chunk.chunk_id, "doc_id": h.chunk.doc_id,
                                         "title": h.chunk.title, "text": h.chunk.text, "score": h.score}
                                        for h in row] for row in hits]
        return [row[:k] for row in self._search_cache[key]]

    def _texts_for(self, citations: list[dict]) -> list[dict]:
        """Citation texts from the local index (when one is configured), for quote checks."""
        if not self.cfg.index or not citations:
            return []
        try:
            chunks = self._open_index().get([str(c.get("chunk_id")) for c in citations if c.get("chunk_id")])
        except Exception:  # an index that does not match the gateway's is not fatal for scoring
            return []
        return [{"chunk_id": c.chunk_id, "doc_id": c.doc_id, "title": c.title, "text": c.text} for c in chunks]

    # -- one question -------------------------------------------------------------------------------
    async def score(self, spec: RunSpec, item: EvalItem, docs: list[dict] | None) -> dict[str, Any]:
        s, cfg = spec.system, self.cfg
        old = self.done.get((s.name, spec.sweep, spec.value, str(item.id)))
        if old is not None:  # already in the partial file: not written again, its cost at today's price
            self.reused += 1
            self.on_progress(spec.label, 1)
            return {**old, "cost": s.price_of(cfg.price).cost(old.get("prompt_tokens"), old.get("completion_tokens"))}
        top_k = spec.value if spec.sweep == "top_k" else s.top_k
        extra = None
        if spec.sweep == "distractors" or s.retrieval in ("local", "record"):
            messages = build_messages(item.question, docs or [])
            if s.retrieval == "gateway":  # we render the documents; the gateway must not add more
                extra = {"retrieval": {"enabled": False}}
        elif s.retrieval == "gateway":
            messages = [{"role": "user", "content": item.question}]
            extra = {"retrieval": {"enabled": True, "top_k": top_k, "mode": s.search_mode,
                                   **({"filter": s.filter} if s.filter else {}),
                                   # false too: a gateway that reranks by default must not for a plain system
                                   "rerank": s.rerank}}
        else:  # closed book: same prompt, no documents
            messages = build_messages(item.question, [])
        if s.extra_body:
            extra = {**s.extra_body, **(extra or {})}
        reply = await self.endpoints[s.name].chat(messages, max_tokens=cfg.max_tokens,
                                                  temperature=cfg.temperature, extra_body=extra)
        retrieved_docs = docs or []
        if s.retrieval == "gateway" and spec.sweep != "distractors":
            retrieved_docs = reply.citations
        gold, key = _gold(item, cfg.gold_level, retrieved_docs)
        answer = extract_answer(reply.text)
        row: dict[str, Any] = {
            "system": s.name, "sweep": spec.sweep, "value": spec.value, "id": item.id,
            "fingerprint": self.fingerprints[s.name],
            "question": item.question, "answers": item.answers, "prediction": answer, "raw": reply.text,
            "error": reply.error, "latency_s": round(reply.latency_s, 4),
            # as the endpoint reported them in `usage` (None when it did not), and what they cost at the
            # system's price (None without a price or without the counts)
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "cost": s.price_of(cfg.price).cost(reply.prompt_tokens, reply.completion_tokens),
            "em": None if reply.error else exact_match(answer, item.answers, self.style),
            "f1": None if reply.error else token_f1(answer, item.answers, self.style),
            "answer_tag": ANSWER_TAG in reply.text,
            "retrieved": [str(d.get(key)) for d in retrieved_docs if d.get(key) is not None],
        }
        retrieved_here = spec.sweep != "distractors" and s.retrieval in ("gateway", "local")
        for k in cfg.k_values:
            ok = retrieved_here and not reply.error and k <= top_k
            row[f"recall@{k}"] = recall_at_k(row["retrieved"], gold, k) if ok else None
        row["mrr"] = reciprocal_rank(row["retrieved"], gold) if retrieved_here and not reply.error else None
        # quotes are checked against the texts shown; for a gateway, texts come from the local index
        # when configured, else from the quotes the gateway reports it verified in its citations
        shown = retrieved_docs if s.retrieval != "gateway" or spec.sweep == "distractors" else \
            (self._texts_for(reply.citations) or
             [{**c, "text": " ".join(c.get("quotes") or [])} for c in reply.citations])
        row["n_quotes"], row["n_valid_quotes"] = quote_validity(reply.text, shown)
        if s.retrieval == "gateway" and spec.sweep != "distractors":
            # cited = passages the answer quotes, exactly as for local/record systems (not every
            # retrieved passage: that would score retrieval, and make the rows incomparable)
            quoted = [c for c in reply.citations if c.get("quotes")]
            cited = [str(c.get(key)) for c in quoted if c.get(key) is not None]
        else:
            cited = quoted_doc_ids(reply.text, shown, key)
        row["cited"] = cited
        if s.retrieval == "off" and spec.sweep != "distractors" or reply.error:
            row["citation_precision"] = row["citation_recall"] = None
        else:
            row["citation_precision"], row["citation_recall"] = citation_scores(cited, gold)
        row["judge"] = None
        if self.judge and not reply.error:
            row["judge"], row["judge_reply"] = await judge_score(
                self.judge, item.question, item.answers, answer, cfg.judge.max_tokens)
        self.on_row(row)
        self.on_progress(spec.label, 1)
        return row

    # -- runs ---------------------------------------------------------------------------------------
    def docs_for(self, spec: RunSpec) -> list[list[dict] | None]:
        s = spec.system
        if spec.sweep == "distractors":
            return [with_distractors(it, spec.value or 0, self.pool, self.cfg.seed) for it in self.items]
        if s.retrieval == "local":
            return self.local_docs(s, spec.value if spec.sweep == "top_k" else s.top_k)
        if s.retrieval == "record":
            missing = [it.id for it in self.items if it.shown is None]
            if missing:
                raise RaftError(f"system {s.name!r} uses `retrieval: record` but {len(missing)} question(s) "
                                f"carry no shown documents (first: {missing[0]!r}); use RAFT records "
                                "(OUT/raft/SPLIT.jsonl) or another retrieval mode")
            return [it.shown for it in self.items]
        return [None] * len(self.items)

    async def run(self, spec: RunSpec) -> list[dict[str, Any]]:
        docs = self.docs_for(spec)
        pairs = [(it, d) for it, d in zip(self.items, docs) if not (spec.sweep == "distractors" and d is None)]
        return list(await asyncio.gather(*(self.score(spec, it, d) for it, d in pairs)))

    async def close(self) -> None:
        for e in list(self.endpoints.values()) + ([self.judge] if self.judge else []):
            await e.aclose()


async def check_reachable(cfg: EvalConfig) -> None:
    """The endpoints' start-up check alone (RaftError naming the first that fails): `raft eval` runs it
    before anything slow, such as converting a GGUF model whose name a system requests."""
    ev = Evaluator(cfg, [])
    try:
        await ev.check_endpoints()
    finally:
        await ev.close()


def _has_usage(row: dict[str, Any]) -> bool:
    return row.get("prompt_tokens") is not None and row.get("completion_tokens") is not None


def cost_metrics(ok: list[dict[str, Any]], price: PriceConfig | None = None) -> dict[str, Any]:
    """Latency percentiles, tokens per answer and cost per correct answer over a run's answered rows.

    Token means are over the answers whose endpoint reported `usage` (`usage_missing` counts the others);
    totals (tokens and cost per EM-correct answer) need every answer's counts, else they are None, as is
    any figure per correct answer when no answer is correct, and the cost without a price."""
    counted = [r for r in ok if _has_usage(r)]
    correct = sum(1 for r in ok if r.get("em") == 1.0)
    complete = bool(ok) and len(counted) == len(ok)
    total_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in counted) if complete else None
    priced = price is not None and price.is_set
    total_cost = (sum(price.cost(r["prompt_tokens"], r["completion_tokens"]) for r in counted)
                  if priced and complete else None)
    return {
        "latency_p50_s": percentile((r["latency_s"] for r in ok), 50),
        "latency_p95_s": percentile((r["latency_s"] for r in ok), 95),
        "prompt_tokens": mean(r["prompt_tokens"] for r in counted),
        "completion_tokens": mean(r["completion_tokens"] for r in counted),
        "tokens_per_answer": mean(r["prompt_tokens"] + r["completion_tokens"] for r in counted),
        "usage_missing": len(ok) - len(counted),
        "correct": correct,
        "tokens_per_correct": total_tokens / correct if total_tokens is not None and correct else None,
        "price": price.model_dump() if priced else None,
        "cost": total_cost,
        "cost_per_correct": total_cost / correct if total_cost is not None and correct else None,
    }


def aggregate(rows: list[dict[str, Any]], k_values: list[int], price: PriceConfig | None = None) -> dict[str, Any]:
    """Means over one run's rows (errors excluded from answer metrics, counted separately), with the
    latency, token and cost figures of `cost_metrics` (at `price`, when one is set)."""
    ok = [r for r in rows if not r["error"]]
    quotes = sum(r["n_quotes"] for r in ok)
    out: dict[str, Any] = {
        "n": len(rows), "errors": len(rows) - len(ok),
        "em": mean(r["em"] for r in ok), "f1": mean(r["f1"] for r in ok),
        "answer_tag_rate": mean(float(r["answer_tag"]) for r in ok),
    }
    for k in k_values:
        out[f"recall@{k}"] = mean(r[f"recall@{k}"] for r in ok)
    out.update({
        "mrr": mean(r["mrr"] for r in ok),
        "quotes": quotes,
        "quote_validity": (sum(r["n_valid_quotes"] for r in ok) / quotes) if quotes else None,
        "citation_precision": mean(r["citation_precision"] for r in ok),
        "citation_recall": mean(r["citation_recall"] for r in ok),
        "judge": mean(r.get("judge") for r in ok),
        "latency_s": mean(r["latency_s"] for r in ok),
        **cost_metrics(ok, price),
    })
    if rows and not ok:
        out["first_error"] = rows[0]["error"]
    return out


def _reuses_main(spec: RunSpec) -> bool:
    """A top-k sweep point at the system's own top_k asks exactly what its main run asked."""
    return spec.sweep == "top_k" and spec.value == spec.system.top_k


async def evaluate(cfg: EvalConfig, items: list[EvalItem],
                   on_progress: Callable[[str, int], None] | None = None,
                   on_start: Callable[[RunSpec, int], None] | None = None,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   done: dict[RowKey, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Check endpoints, run every planned run, and return {"runs": [...], "predictions": [...], ...}.
    `on_row` gets each scored answer as it comes back (`raft eval` writes it out at once, so a failure
    later loses none of them). `done` maps (system, sweep, value, question id) to rows an interrupted run
    already scored (`raft eval --resume`): those questions are not asked again.

    Runs against different endpoints (the base model's engine, the gateway) go on at the same time; runs
    against one endpoint take turns, in plan order, so that its main run comes before its sweeps."""
    if not cfg.systems:
        raise RaftError("no systems to evaluate: list them under eval.systems, or pass --base-url and --model")
    ev = Evaluator(cfg, items, on_progress, on_row, done)
    start = time.perf_counter()
    try:
        listed = await ev.check_endpoints()
        have_oracles = any(it.oracle_docs for it in items)
        plan = plan_runs(cfg, have_oracles)
        rows_of: dict[int, list[dict[str, Any]]] = {}
        main_rows: dict[str, list[dict[str, Any]]] = {}

        async def one_endpoint(indices: list[int]) -> None:
            for i in indices:
                spec = plan[i]
                if on_start:
                    on_start(spec, len(items))
                if _reuses_main(spec) and spec.system.name in main_rows:
                    rows = [{**r, "sweep": spec.sweep, "value": spec.value} for r in main_rows[spec.system.name]]
                    ev.on_progress(spec.label, len(rows))
                else:
                    rows = await ev.run(spec)
                if spec.sweep == "main":
                    main_rows[spec.system.name] = rows
                rows_of[i] = rows

        by_endpoint: dict[str, list[int]] = {}
        for i, spec in enumerate(plan):
            by_endpoint.setdefault(spec.system.base_url, []).append(i)
        await asyncio.gather(*(one_endpoint(ix) for ix in by_endpoint.values()))
        runs, predictions = [], []
        for i, spec in enumerate(plan):
            rows = rows_of[i]
            predictions += rows
            runs.append({"system": spec.system.name, "sweep": spec.sweep, "value": spec.value,
                         "label": spec.label, "retrieval": spec.system.retrieval,
                         "model": spec.system.model, "base_url": spec.system.base_url,
                         "top_k": spec.value if spec.sweep == "top_k" else spec.system.top_k,
                         **aggregate(rows, cfg.k_values, spec.system.price_of(cfg.price))})
    finally:
        await ev.close()
    return {"runs": runs, "best": best_per_metric(runs), "predictions": predictions, "answer_style": ev.style,
            "n_items": len(items), "reused_answers": ev.reused,
            "models_listed": listed, "elapsed_s": round(time.perf_counter() - start, 2),
            "distractor_sweep_skipped": bool(cfg.sweep.distractors) and not have_oracles}
