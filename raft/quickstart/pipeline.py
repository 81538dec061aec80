"""`raft quickstart`: the whole pipeline on a CPU, by running the real `raft` commands one after another.

Each step is the command a user would type (printed before it runs), so the quickstart is also the
tutorial: the base model (SmolLM2-135M-Instruct from its GGUF, converted once) -> `raft build` -> `raft train`
(Ray Train) -> `raft export --merge` -> `raft serve` (Ray Serve gateway + retriever actors + raft's batched
engine) -> questions through the OpenAI client -> `raft eval` (base vs base+RAG vs RAFT+RAG on held-out
questions). Paths and ports in the config are replaced by ones under `--out` and free ports, so runs never
collide.
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
from raft.quickstart import CORPUS, QUESTIONS, TRAIN_QUESTIONS

DEMO_NOTE = (
    "SmolLM2-135M-Instruct fine-tuned for a few minutes on a CPU is a demonstration of what RAFT training does "
    "to how a model reads retrieved passages, not a production model. For a real model on a GPU use "
    "configs/train_llama8b_qlora.yaml, configs/serve_vllm.yaml and configs/eval_gpu.yaml."
)
DEMO_QUESTIONS = 3


class Pipeline:
    def __init__(self, out: Path, config: Path, console: Console, gateway_port: int | None = None):
        self.out, self.config, self.console = out.resolve(), config.resolve(), console
        self.sections = yaml.safe_load(config.read_text()) or {}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}
        self.gateway_port = gateway_port or free_port()
        self.engine_port, self.base_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.timings: dict[str, float] = {}
        self.started: dict[str, float] = {}  # seconds from the quickstart's start to each step's start
        self.t_start = time.monotonic()
        self.base_model_name = str(self.sections.get("train", {}).get("model", {}).get("name_or_path", ""))
        engine = self.sections.get("serve", {}).get("engine", {})
        # the base model's engine runs like the served one: same batch size and flags
        self.engine_args = ["--max-batch", str(engine.get("max_batch_size", 8)), *map(str, engine.get("extra_args", []))]

    def begin(self, step: str) -> float:
        self.console.rule(f"[bold]{step}")
        now = time.monotonic()
        self.started[step] = now - self.t_start
        return now

    def end(self, step: str, t0: float) -> None:
        self.timings[step] = time.monotonic() - t0

    # -- paths -------------------------------------------------------------------------------------
    def p(self, name: str) -> str:
        return self.shown(self.out / name)

    @staticmethod
    def shown(path: Path) -> str:
        """A path as the printed commands show it: relative to the working directory when it is inside it."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    # -- running commands --------------------------------------------------------------------------
    def raft(self, step: str, *argv: str) -> None:
        """Run `raft ARGV...` in a subprocess, streaming its output; fail the quickstart if it fails."""
        shown = "raft " + shlex.join(argv)
        t0 = self.begin(step)
        self.console.print(f"[dim]$ {shown}[/]", highlight=False)
        rc = subprocess.run([sys.executable, "-m", "raft.cli", *argv], env=self.env).returncode
        self.end(step, t0)
        if rc != 0:
            raise RaftError(f"quickstart step '{step}' failed (exit {rc}); the command was: {shown}")

    def background(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.out / f"{name}.log", "w")
        shown = shlex.join(argv).replace(shlex.join([sys.executable, "-m", "raft.cli"]), "raft")
        shown = shown.replace(shlex.join([sys.executable, "-m", "serving.batched"]), "python -m serving.batched")
        self.console.print(f"[dim]$ {shown} &   (log: {self.shown(Path(log.name))})[/]", highlight=False)
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

    def write_config(self) -> Path:
        """The pipeline config with this run's paths and ports filled in, written to OUT/quickstart.yaml:
        every printed command reads it, so each step can be rerun by hand exactly as it ran."""
        import copy

        c = copy.deepcopy(self.sections)
        b, t, s, e = (c.setdefault(k, {}) for k in ("build", "train", "serve", "eval"))
        b["questions_file"] = str(TRAIN_QUESTIONS)
        t.setdefault("data", {})["path"] = str(self.out / "dataset")
        t.setdefault("ray", {})["storage_path"] = str(self.out / "ray")
        t["output_dir"] = str(self.out / "adapter")
        s.setdefault("engine", {}).update({"model": str(self.out / "merged"), "port": self.engine_port})
        s.setdefault("retrieval", {})["index_dir"] = str(self.out / "dataset" / "index")
        s["port"] = self.gateway_port
        e.update({"data": str(QUESTIONS), "index": str(self.out / "dataset" / "index"), "out": str(self.out / "eval")})
        for system in e.get("systems", []):
            port = self.gateway_port if system.get("retrieval") == "gateway" else self.base_port
            system["base_url"] = f"http://127.0.0.1:{port}/v1"
        path = self.out / "quickstart.yaml"
        path.write_text(f"# written by raft quickstart from {self.config}: this run's paths and ports\n"
                        + yaml.safe_dump(c, sort_keys=False))
        return path

    # -- the steps ---------------------------------------------------------------------------------
    def base_model(self) -> str:
        """The base model as the config names it, converted (once, then cached) if it is a GGUF."""
        from raft.model_source import resolve_model

        name = self.base_model_name
        t0 = self.begin("1. base model")
        path = resolve_model(name, log=lambda m: self.console.print(m, highlight=False))
        self.end("1. base model", t0)
        self.console.print(f"{name} -> {path}", highlight=False)
        return name

    def run(self, ask: bool = True, evaluate: bool = True) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.t_start = time.monotonic()
        cfg = self.shown(self.write_config())
        self.console.print(f"[bold]raft quickstart[/]: output in {self.shown(self.out)}; each step below runs "
                           f"with {cfg} (this run's paths and ports)", highlight=False)
        self.base_model()
        self.raft("2. build the RAFT dataset", "build", self.shown(CORPUS), "--out", self.p("dataset"),
                  "--config", cfg)
        self.raft("3. fine-tune a LoRA adapter on Ray", "train", "--config", cfg)
        self.raft("4. merge the adapter", "export", self.p("adapter"), "--merge", "--out", self.p("merged"))
        answers: list[dict] = []
        report: dict = {}
        try:
            t_serve = self.begin("5. serve: gateway + retrieval + engine")
            gw = self.background("gateway", [sys.executable, "-m", "raft.cli", "serve", "--config", cfg])
            base = None
            if evaluate:
                # the base model for the base and base+RAG systems, on the same batched engine raft serve uses
                base = self.background("base-engine", [
                    sys.executable, "-m", "serving.batched", self.base_model_name, "--host", "127.0.0.1",
                    "--port", str(self.base_port), "--device", "cpu", "--exit-with-parent", *self.engine_args])
            self.wait_healthy("gateway", f"http://127.0.0.1:{self.gateway_port}/health", gw)
            if base is not None:
                self.wait_healthy("base-engine", f"http://127.0.0.1:{self.base_port}/health", base)
            self.end("5. serve: gateway + retrieval + engine", t_serve)
            if ask:
                t_ask = self.begin("6. ask held-out questions through the OpenAI client")
                answers = self.ask()
                self.end("6. ask held-out questions through the OpenAI client", t_ask)
            if evaluate:
                report = self.evaluate(cfg)
        finally:
            self.stop_all()
        total = time.monotonic() - self.t_start
        self.summary(total, report)
        result = {"answers": answers, "report": report, "timings": self.timings, "total_s": total}
        (self.out / "quickstart_summary.json").write_text(json.dumps({
            "timings": self.timings, "started_at_s": self.started, "total_s": round(total, 1),
            "eval": {r["label"]: {k: r.get(k) for k in ("em", "f1", "answer_tag_rate", "quote_validity", "n")}
                     for r in report.get("runs", [])}}, indent=2))
        return result

    def ask(self) -> list[dict]:
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{self.gateway_port}/v1", api_key="EMPTY")
        questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
        answers = []
        for q in questions[:DEMO_QUESTIONS]:
            resp = client.chat.completions.create(
                model="raft", messages=[{"role": "user", "content": q["question"]}], max_tokens=64,
                temperature=0.0, extra_body={"retrieval": {"top_k": 3}})
            citations = resp.model_dump().get("citations") or []
            self.console.print(f"[bold]Q:[/] {q['question']}  [dim](gold: {q['answers'][0]})[/]", highlight=False)
            self.console.print(f"[bold]A:[/] {resp.choices[0].message.content!r}", highlight=False)
            quoted = [c for c in citations if c.get("quotes")]  # the gateway verified these quotes
            self.console.print(f"   [cyan]{'cited' if quoted else 'retrieved (no verified quote)'}:[/] " + ", ".join(
                f"{c.get('doc_id')} ({c.get('score', 0):.2f})" for c in (quoted or citations)), highlight=False)
            answers.append({"question": q["question"], "answer": resp.choices[0].message.content,
                            "citations": citations})
        return answers

    def evaluate(self, cfg: str) -> dict:
        self.raft("7. evaluate base vs base+RAG vs RAFT+RAG on held-out questions", "eval", "--config", cfg)
        report_json = self.out / "eval" / "report.json"
        return json.loads(report_json.read_text()) if report_json.exists() else {}

    def summary(self, total: float, report: dict) -> None:
        t = Table(title="raft quickstart", show_header=True)
        t.add_column("step")
        t.add_column("seconds", justify="right")
        for step, secs in self.timings.items():
            t.add_row(step, f"{secs:.1f}")
        t.add_row("[bold]total", f"[bold]{total:.1f}")
        self.console.print(t)
        report_md = self.out / "eval" / "report.md"
        self.console.print(f"outputs: dataset {self.p('dataset')}, adapter {self.p('adapter')}, merged model "
                           f"{self.p('merged')}" + (f", eval report {report_md}" if report_md.exists() else "")
                           + f"; server logs {self.p('gateway.log')}, {self.p('base-engine.log')}",
                           highlight=False)
        for line in conclusion(report):
            self.console.print(line, highlight=False)
        self.console.print(f"[yellow]{DEMO_NOTE}[/]")


def _run(report: dict, label: str) -> dict | None:
    return next((r for r in report.get("runs", []) if r.get("label") == label), None)


def conclusion(report: dict) -> list[str]:
    """What the evaluation table shows, in plain words, from the figures in `report`."""
    base, rag, raft = _run(report, "base"), _run(report, "base+RAG"), _run(report, "RAFT+RAG")
    if not (base and rag and raft):
        return []
    n = report.get("n_items", raft["n"])
    pct = lambda v: f"{100 * (v or 0):.0f}%"  # noqa: E731
    lines = [f"On {n} held-out questions (none of them trained on): closed book, the base model answered "
             f"{pct(base['em'])} exactly (F1 {base['f1'] or 0:.2f}): the facts are not in the model. Given the "
             f"retrieved passages, it answered {pct(rag['em'])} exactly (F1 {rag['f1'] or 0:.2f}), with the "
             f"`<ANSWER>:` tag in {pct(rag['answer_tag_rate'])} of its replies. After RAFT training, the same "
             f"model with the same retrieval answered {pct(raft['em'])} exactly (F1 {raft['f1'] or 0:.2f}), "
             f"tagged {pct(raft['answer_tag_rate'])} of its answers and quoted its evidence verbatim in "
             f"{pct(raft['quote_validity'])} of its quotes."]
    free = _run(report, "RAFT+RAG unguarded")
    if free:
        lines.append(f"The engine's quote guard keeps quotes inside the retrieved passages; without it the RAFT model "
                     f"alone quoted verbatim in {pct(free['quote_validity'])} of its quotes and answered "
                     f"{pct(free['em'])} exactly (F1 {free['f1'] or 0:.2f}).")
    sweep = [r for r in report.get("runs", []) if r.get("system") == "RAFT+RAG" and r.get("sweep") == "top_k"]
    if sweep:
        lines.append("RAFT+RAG by number of retrieved passages: " + ", ".join(
            f"top-{r['value']} EM {r['em'] or 0:.2f}" for r in sorted(sweep, key=lambda r: r["value"])) + ".")
    return lines
