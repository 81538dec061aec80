"""Teachers behind one interface: `await teacher.questions(...)` and `await teacher.answer(...)` return a
`Completion` (raw text + finish reason + token usage); parsing and checking happen in the builder.

- `OpenAITeacher`: any OpenAI-compatible endpoint (vLLM, OpenAI, `transformers serve`) over async aiohttp,
  bounded concurrency, per-request timeout, retries with exponential backoff and full jitter on
  429/5xx/timeouts/dropped connections (Retry-After honoured), token accounting.
- `VLLMOfflineTeacher`: vLLM's in-process batch engine; concurrent requests are gathered into batches for
  `LLM.chat`. Import-guarded: only constructed when vllm is installed.
- `StepwiseTeacher` (raft/data/teacher_stepwise.py, `teacher.strategy=stepwise`): wraps either of the two
  above for small models: one short question or answer phrase per call, checked and assembled by the teacher.
- `ExtractiveTeacher`: no model at all. A SMOKE GENERATOR: questions are fill-in-the-blank templates made
  from the chunk's sentences and answers quote the best-matching sentence. It makes the pipeline run
  offline and produces keepable records, but the data teaches nothing a real teacher would.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from raft.data.config import TeacherConfig
from raft.data.generation import answer_in_text, answer_messages, question_messages
from raft.errors import RaftError
from raft.prompt import cot_answer


@dataclass
class Completion:
    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class TeacherRequestError(Exception):
    """A request that failed after all retries; `reason` is a short label counted in the summary."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class TeacherStats:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)  # replies a teacher's own checks rejected, by reason


class ChatTeacher:
    """Base of model-backed teachers: renders the teacher prompts and calls `complete`."""

    kind = "chat"

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.name = cfg.model
        self.stats = TeacherStats()

    def signature(self) -> dict[str, Any]:
        """What, besides the prompt, changes the output (part of every cache key)."""
        c = self.cfg
        return {"kind": self.kind, "model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens,
                "seed": c.seed, "extra_body": c.extra_body}

    async def check(self) -> list[str]:
        """Raise RaftError quickly when the teacher cannot be used; returns warnings for the user."""
        return []

    async def aclose(self) -> None:
        pass

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, seed: int | None) -> Completion:
        raise NotImplementedError

    async def questions(self, chunk_text: str, n: int, mode: str, seed: int | None = None) -> Completion:
        return await self.complete(question_messages(chunk_text, n, mode),
                                   max(64, self.cfg.max_tokens // 4), seed)

    async def answer(self, question: str, oracle_texts: Sequence[str], mode: str, hint: str | None = None,
                     seed: int | None = None) -> Completion:
        return await self.complete(answer_messages(question, oracle_texts, mode, hint), self.cfg.max_tokens, seed)


def request_body(cfg: TeacherConfig, messages, max_tokens: int, seed: int | None) -> dict[str, Any]:
    """The JSON body of one chat-completions request."""
    body = {"model": cfg.model, "messages": messages, "max_tokens": max_tokens, "temperature": cfg.temperature}
    s = cfg.seed if cfg.seed is not None else seed
    if s is not None:
        body["seed"] = int(s)
    body.update(cfg.extra_body)
    return body


class OpenAITeacher(ChatTeacher):
    """Chat completions over aiohttp (httpx's connection pool tops out near 35 requests/s here, far below
    what a 64-way build needs; see benchmarks/build_throughput.py)."""

    kind = "openai"

    def __init__(self, cfg: TeacherConfig):
        super().__init__(cfg)
        key = os.environ.get(cfg.api_key_env, "") or "EMPTY"
        self.base_url = cfg.base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"}
        self._session = None
        self._sem = asyncio.Semaphore(cfg.concurrency)

    def _client(self):
        import aiohttp

        if self._session is None:  # created inside the running event loop, as aiohttp requires
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.cfg.concurrency, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s,
                                              connect=min(self.cfg.timeout_s, self.cfg.connect_check_s)))
        return self._session

    async def check(self) -> list[str]:
        import aiohttp

        try:
            async with self._client().get(self.base_url + "/models",
                                          timeout=aiohttp.ClientTimeout(total=self.cfg.connect_check_s)) as r:
                status = r.status
                text = await r.text(errors="replace") if status == 200 else ""
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise RaftError(f"teacher endpoint {self.base_url} is unreachable ({type(e).__name__}: {e}); start "
                            "the server or fix build.teacher.base_url") from None
        if status in (401, 403):
            raise RaftError(f"teacher endpoint {self.base_url} refused the API key (HTTP {status}); set "
                            f"${self.cfg.api_key_env} or build.teacher.api_key_env")
        if status == 404:
            # every chat request would get the same 404 (counted, after indexing): usually a base_url without /v1
            hint = (f"; try teacher.base_url={self.base_url}/v1" if not self.base_url.endswith("/v1")
                    else "; check the path of teacher.base_url")
            raise RaftError(f"teacher endpoint {self.base_url} answered 404 Not Found to GET "
                            f"{self.base_url}/models: it is not the root of an OpenAI-compatible API, whose "
                            "base_url usually ends in /v1" + hint)
        return self._check_model(text) if status == 200 else []

    # Servers that answer 404 to a model name they do not list (vLLM; raft's own gateway). Others may load
    # an unlisted model on request (`transformers serve` lists only its HF cache, yet loads any path).
    STRICT_OWNERS = frozenset({"vllm", "raft"})

    def _check_model(self, text: str) -> list[str]:
        """teacher.model against the ids GET /models listed: an error where the server is known to refuse an
        unlisted name, else a warning (nothing when the reply lists no models)."""
        try:
            cards = [m for m in json.loads(text)["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, KeyError, TypeError):
            return []  # reachable, but it does not list models in OpenAI's shape
        ids = [m["id"] for m in cards]
        if not ids or self.cfg.model in ids:
            return []
        shown = ", ".join(ids[:5]) + (f" ... ({len(ids)} in all)" if len(ids) > 5 else "")
        msg = f"teacher.model={self.cfg.model!r} is not among the models {self.base_url}/models lists: {shown}"
        if all(m.get("owned_by") in self.STRICT_OWNERS for m in cards):
            raise RaftError(f"{msg}; the server answers 404 to any other name: set teacher.model to one of them")
        return [f"{msg}; a server that loads models on request (transformers serve) accepts it, others answer "
                "404 to every request: check teacher.model"]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _backoff(self, retry: int, retry_after: str | None) -> float:
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2 ** retry))
        delay = random.uniform(0, cap)  # full jitter: spreads a 429 storm's retries out
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.cfg.backoff_max_s))
            except ValueError:
                pass
        return delay

    async def complete(self, messages, max_tokens: int, seed: int | None) -> Completion:
        import aiohttp

        body = request_body(self.cfg, messages, max_tokens, seed)
        url = self.base_url + "/chat/completions"
        async with self._sem:
            last = ("error", "")
            for retry in range(self.cfg.max_retries + 1):
                self.stats.requests += 1
                if retry:
                    self.stats.retries += 1
                retry_after = None
                try:
                    async with self._client().post(url, json=body) as r:
                        status, text = r.status, await r.text(errors="replace")
                        retry_after = r.headers.get("Retry-After")
                except asyncio.TimeoutError as e:
                    last = ("timeout", str(e))
                except (aiohttp.ClientError, OSError) as e:
                    last = ("connection", f"{type(e).__name__}: {e}")
                else:
                    if status == 200:
                        try:
                            return self._parse(json.loads(text))
                        except (ValueError, KeyError, IndexError, TypeError) as e:
                            last = ("malformed_response", f"{type(e).__name__}: {text[:120]!r}")
                    elif status == 429 or status >= 500:
                        last = (f"http_{status}", text[:200])
                    else:  # 4xx other than 429: asking again will not help
                        self.stats.errors[f"http_{status}"] += 1
                        raise TeacherRequestError(f"http_{status}", text[:200])
                if retry < self.cfg.max_retries:
                    await asyncio.sleep(self._backoff(retry, retry_after))
            self.stats.errors[last[0]] += 1
            raise TeacherRequestError(*last)

    def _parse(self, data: dict) -> Completion:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if text is not None and not isinstance(text, str):
            raise TypeError("message.content is not a string")
        usage = data.get("usage") or {}
        c = Completion(text or "", choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
                       int(usage.get("completion_tokens") or 0))
        self.stats.prompt_tokens += c.prompt_tokens
        self.stats.completion_tokens += c.completion_tokens
        return c


def vllm_batch(cfg: TeacherConfig, requests: Sequence[tuple[list[dict], int, int | None]]):
    """vLLM offline inputs for a batch of (messages, max_tokens, seed): conversations + SamplingParams kwargs.

    Separated from the engine so it is testable without vllm or a GPU.
    """
    conversations = [list(m) for m, _, _ in requests]
    params = []
    for _, max_tokens, seed in requests:
        kw = {"temperature": cfg.temperature, "max_tokens": max_tokens}
        s = cfg.seed if cfg.seed is not None else seed
        if s is not None:
            kw["seed"] = int(s)
        kw.update({k: v for k, v in cfg.extra_body.items() if k in ("top_p", "top_k", "min_p", "stop")})
        params.append(kw)
    return conversations, params


class VLLMOfflineTeacher(ChatTeacher):
    """vLLM's in-process engine. Requests that arrive together are flushed as one `LLM.chat` batch."""

    kind = "vllm_offline"

    def __init__(self, cfg: TeacherConfig, batch_wait_s: float = 0.05):
        super().__init__(cfg)
        try:
            from vllm import LLM, SamplingParams  # noqa: F401
        except ImportError:
            raise RaftError("build.teacher.kind=vllm_offline needs vllm: pip install 'raft-stack[vllm]' "
                            "(or use kind=openai with a running `vllm serve`)") from None
        self._SamplingParams = SamplingParams
        self._llm = LLM(model=cfg.model, seed=cfg.seed or 0)
        self._queue: list[tuple[tuple, asyncio.Future]] = []
        self._wait = batch_wait_s
        self._flusher: asyncio.Task | None = None

    async def complete(self, messages, max_tokens: int, seed: int | None) -> Completion:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(((messages, max_tokens, seed), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        # Requests that arrive while a batch is generating wait for the next round of this same loop
        # (returning after one batch would strand them: nothing else would start a flusher).
        await asyncio.sleep(self._wait)
        while self._queue:
            batch, self._queue = self._queue, []
            await self._run_batch(batch)

    async def _run_batch(self, batch: list) -> None:
        convs, params = vllm_batch(self.cfg, [req for req, _ in batch])
        sampling = [self._SamplingParams(**p) for p in params]
        try:
            outs = await asyncio.to_thread(self._llm.chat, convs, sampling, use_tqdm=False)
        except Exception as e:  # one failing batch drops its requests, counted, and the build goes on
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(TeacherRequestError("vllm_error", str(e)))
            return
        for (_, fut), out in zip(batch, outs):
            o = out.outputs[0]
            c = Completion(o.text, o.finish_reason, len(out.prompt_token_ids or []), len(o.token_ids or []))
            self.stats.requests += 1
            self.stats.prompt_tokens += c.prompt_tokens
            self.stats.completion_tokens += c.completion_tokens
            if not fut.done():  # a cancelled waiter must not kill the flusher for the rest of the batch
                fut.set_result(c)


_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_NUMBER = re.compile(r"[A-Za-z0-9'\-]*\d(?:[.,]?[A-Za-z0-9'\-])*")  # "9,000", "1.5", "3rd": whole, not "9"


def sentences(text: str) -> list[str]:
    """Sentences of a chunk, each a verbatim substring of it (markdown heading marks trimmed)."""
    out = []
    for s in _SENT_SPLIT.split(text or ""):
        s = s.strip().lstrip("#>*- ").strip()
        if len(_WORD.findall(s)) >= 4:
            out.append(s)
    return out


def _blank_target(sentence: str) -> str | None:
    """The span a cloze question asks for: a number, else a capitalised word after the first, else the last word."""
    num = _NUMBER.search(sentence)
    if num:
        return num.group()
    words = _WORD.findall(sentence)
    caps = [w for w in words[1:] if w[0].isupper() and len(w) > 2]
    if caps:
        return caps[0]
    long = [w for w in words if len(w) > 4]
    return long[-1] if long else None


def _overlap(a: str, b: str) -> int:
    wa = {w.lower() for w in _WORD.findall(a)}
    return len(wa & {w.lower() for w in _WORD.findall(b)})


class ExtractiveTeacher(ChatTeacher):
    """A smoke generator needing no model (see module docstring): deterministic, instant, offline."""

    kind = "extractive"
    BLANK = "_____"

    def __init__(self, cfg: TeacherConfig | None = None):
        super().__init__(cfg or TeacherConfig(kind="extractive", model="extractive"))
        self.name = "extractive"

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": 3}

    async def questions(self, chunk_text: str, n: int, mode: str, seed: int | None = None) -> Completion:
        lines = []
        for s in sentences(chunk_text):
            target = _blank_target(s)
            if target:
                blanked = re.sub(rf"\b{re.escape(target)}\b", self.BLANK, s, count=1)
                lines.append(f"Fill in the blank: {blanked}")
            if len(lines) == n:
                break
        self.stats.requests += 1
        return Completion("\n".join(lines), "stop")

    async def answer(self, question: str, oracle_texts: Sequence[str], mode: str, hint: str | None = None,
                     seed: int | None = None) -> Completion:
        self.stats.requests += 1
        cands = [s for t in oracle_texts for s in sentences(t)]
        if not cands:
            return Completion("", "stop")
        body = question.split(":", 1)[1].strip() if question.startswith("Fill in the blank:") else question
        answer = hint
        if hint:
            # the sentence the answer check (quote_supports_answer) accepts; none: the check drops it
            with_hint = [s for s in cands if answer_in_text(hint, s)]
            best = max(with_hint or cands, key=lambda s: _overlap(s, question))
        else:
            best = max(cands, key=lambda s: _overlap(s, body))
            if self.BLANK in body:
                pre, post = (re.escape(p.strip()) for p in body.split(self.BLANK, 1))
                m = re.search(rf"{pre}\s*(.+?)\s*{post}$" if post else rf"{pre}\s*(.+)$", best)
                answer = m.group(1) if m else None
            answer = answer or best
        return Completion(cot_answer("The context states:", [best], answer), "stop")


def make_teacher(cfg: TeacherConfig) -> ChatTeacher:
    if cfg.kind == "extractive":
        return ExtractiveTeacher(cfg)
    teacher = VLLMOfflineTeacher(cfg) if cfg.kind == "vllm_offline" else OpenAITeacher(cfg)
    if cfg.strategy == "stepwise":
        from raft.data.teacher_stepwise import StepwiseTeacher  # it imports this module

        return StepwiseTeacher(teacher)
    return teacher
