"""`raft quickstart`: the whole pipeline on a CPU, by running the real `raft` commands one after another.

Each step is the command a user would type (printed before it runs), so the quickstart is also the
tutorial: build a tiny model -> `raft build` -> `raft train` (Ray Train, 2 workers) -> `raft export --merge`
-> `raft serve` (Ray Serve gateway + retriever actors + `transformers serve`) -> questions through the
OpenAI client -> `raft eval` (base vs base+RAG vs RAFT+RAG). Paths and ports in the config are replaced by
ones under `--out` and free ports, so runs never collide.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from raft.errors import RaftError
from raft.netutil import NotHealthyError, free_port, wait_healthy
from raft.quickstart import CORPUS, QUESTIONS

SMOKE_NOTE = (
    "The model here is a tiny random Llama trained for a minute on a CPU: a smoke model that proves the "
    "plumbing, not a model that knows the answers. For a real run on a GPU use "
    "configs/train_llama8b_qlora.yaml, configs/serve_vllm.yaml and configs/eval_gpu.yaml."
)
DEMO_QUESTIONS = 3


class Pipeline:
    def __init__(self, out: Path, config: Path, console: Console, gateway_port: int | None = None):
        self.out, self.config, self.console = out.resolve(), config.resolve(), console
        self.sections = yaml.safe_load(config.read_text()) or {}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
        self.gateway_port = gateway_port or free_port()
        self.engine_port, self.base_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.timings: dict[str, float] = {}

    # -- paths -------------------------------------------------------------------------------------
    def p(self, name: str) -> str:
        return str(self.out / name)

    # -- running commands --------------------------------------------------------------------------
    def raft(self, step: str, *argv: str) -> None:
        """Run `raft ARGV...` in a subprocess, streaming its output; fail the quickstart if it fails."""
        shown = "raft " + shlex.join(argv)
        self.console.rule(f"[bold]{step}")
        self.console.print(f"[dim]$ {shown}[/]", highlight=False)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "raft.cli", *argv], env=self.env).returncode
        self.timings[step] = time.monotonic() - t0
        if rc != 0:
            raise RaftError(f"quickstart step '{step}' failed (exit {rc}); the command was: {shown}")

    def background(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "w")
        shown = shlex.join(argv).replace(shlex.join([sys.executable, "-m", "raft.cli"]), "raft")
        shown = shown.replace(shlex.join([sys.executable, "-m", "transformers.cli.transformers"]), "transformers")
        self.console.print(f"[dim]$ {shown} &   (log: {log.name})[/]", highlight=False)
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_healthy(self, name: str, url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
        try:
            wait_healthy(url, timeout=timeout, proc=proc, interval=1)
        except NotHealthyError as e:
            raise RaftError(f"{name}: {e}; see {self.out / (name + '.log')}") from None

    def stop_all(self) -> None:
        import signal

        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)  # raft serve stops its engine and Ray Serve on SIGINT
                    proc.wait(timeout=30)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.procs.clear()

    # -- the steps ---------------------------------------------------------------------------------
    def build_model(self) -> None:
        from raft.tiny_model import build_tiny_model, corpus_texts

        self.console.rule("[bold]1. tiny base model")
        t0 = time.monotonic()
        if not (self.out / "base-model" / "config.json").exists():
            build_tiny_model(self.out / "base-model", corpus_texts(CORPUS))
        self.timings["1. tiny base model"] = time.monotonic() - t0
        self.console.print(f"random tiny Llama + BPE tokenizer trained on the corpus -> {self.p('base-model')}")

    def run(self, ask: bool = True, evaluate: bool = True) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = str(self.config)
        t0 = time.monotonic()
        self.console.print(f"[bold]raft quickstart[/]: output in {self.out}\n[yellow]{SMOKE_NOTE}[/]")
        self.build_model()
        self.raft("2. build the RAFT dataset", "build", str(CORPUS), "--out", self.p("dataset"), "--config", cfg)
        self.raft("3. fine-tune a LoRA adapter on Ray", "train", "--config", cfg,
                  f"model.name_or_path={self.p('base-model')}", f"data.path={self.p('dataset')}",
                  f"ray.storage_path={self.p('ray')}", f"output_dir={self.p('adapter')}")
        self.raft("4. merge the adapter", "export", self.p("adapter"), "--merge", "--out", self.p("merged"))
        answers: list[dict] = []
        report: dict = {}
        try:
            self.console.rule("[bold]5. serve: gateway + retrieval + engine")
            t_serve = time.monotonic()
            gw = self.background("gateway", [
                sys.executable, "-m", "raft.cli", "serve", "--config", cfg,
                f"engine.model={self.p('merged')}", f"engine.port={self.engine_port}",
                f"retrieval.index_dir={self.p('dataset/index')}", f"port={self.gateway_port}"])
            base = None
            if evaluate:
                base = self.background("base-engine", [
                    sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
                    "--port", str(self.base_port), "--device", "cpu"])
            self.wait_healthy("gateway", f"http://127.0.0.1:{self.gateway_port}/health", gw)
            if base is not None:
                self.wait_healthy("base-engine", f"http://127.0.0.1:{self.base_port}/health", base)
            self.timings["5. serve"] = time.monotonic() - t_serve
            if ask:
                t_ask = time.monotonic()
                answers = self.ask()
                self.timings["6. ask"] = time.monotonic() - t_ask
            if evaluate:
                report = self.evaluate(cfg)
        finally:
            self.stop_all()
        total = time.monotonic() - t0
        self.summary(total)
        return {"answers": answers, "report": report, "timings": self.timings, "total_s": total}

    def ask(self) -> list[dict]:
        from openai import OpenAI

        self.console.rule("[bold]6. ask through the OpenAI client")
        client = OpenAI(base_url=f"http://127.0.0.1:{self.gateway_port}/v1", api_key="EMPTY")
        questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
        answers = []
        for q in questions[:DEMO_QUESTIONS]:
            resp = client.chat.completions.create(
                model="raft", messages=[{"role": "user", "content": q["question"]}], max_tokens=48,
                temperature=0.0, extra_body={"retrieval": {"top_k": 3}})
            body = resp.model_dump()
            citations = body.get("citations") or []
            self.console.print(f"[bold]Q:[/] {q['question']}  [dim](gold: {q['answers'][0]})[/]")
            self.console.print(f"[bold]A:[/] {resp.choices[0].message.content!r}", highlight=False)
            for c in citations:
                self.console.print(f"   [cyan]cited[/] {c.get('doc_id')} (chunk {c.get('chunk_id')}, "
                                   f"score {c.get('score', 0):.3f}) {c.get('title', '')}", highlight=False)
            answers.append({"question": q["question"], "answer": resp.choices[0].message.content,
                            "citations": citations})
        return answers

    def evaluate(self, cfg: str) -> dict:
        systems = []
        for s in self.sections.get("eval", {}).get("systems", []):
            s = dict(s)
            if s.get("retrieval") == "gateway":
                s["base_url"] = f"http://127.0.0.1:{self.gateway_port}/v1"
            else:
                s["base_url"] = f"http://127.0.0.1:{self.base_port}/v1"
                s["model"] = self.p("base-model")
            systems.append(s)
        self.raft("7. evaluate base vs base+RAG vs RAFT+RAG", "eval", "--config", cfg,
                  f"data={QUESTIONS}", f"index={self.p('dataset/index')}", f"out={self.p('eval')}",
                  "systems=" + json.dumps(systems))
        report_json = self.out / "eval" / "report.json"
        return json.loads(report_json.read_text()) if report_json.exists() else {}

    def summary(self, total: float) -> None:
        t = Table(title="raft quickstart", show_header=True)
        t.add_column("step")
        t.add_column("seconds", justify="right")
        for step, secs in self.timings.items():
            t.add_row(step, f"{secs:.1f}")
        t.add_row("[bold]total", f"[bold]{total:.1f}")
        self.console.print(t)
        self.console.print(f"outputs: dataset {self.p('dataset')}, adapter {self.p('adapter')}, merged model "
                           f"{self.p('merged')}, eval report {self.p('eval/report.md')}")
        self.console.print(f"[yellow]{SMOKE_NOTE}[/]")
