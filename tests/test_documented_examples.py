"""Every shell example a user is shown runs: the README's ```bash blocks and the example of every `--help`,
in order, in one scratch directory laid out like a clone of the repository (configs/, the quickstart's
corpus and questions) plus the inputs the examples name (docs/, new.md, questions.jsonl, ...).

An example exits 0, unless EXPECTED below says otherwise for it: one that needs a GPU, a cluster, a server
already running or another tool is either run and must fail with its documented one-line error (exit 2,
the message given), or is skipped with the reason given. A README example that matches no entry and fails
is a bug in the example or in raft.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_pdf import text_pdf

REPO = Path(__file__).resolve().parents[1]
DOCS = ["geography", "history", "economy", "culture", "transport", "sport", "science", "wildlife"]

# (regex matched against the whole example, what to do): ("error", text the exit-2 message contains),
# ("skip", why it is not run here) or ("slow", why it takes longer: run, marked slow). First match wins.
EXPECTED: list[tuple[str, tuple[str, str]]] = [
    # the README's two commands: CI (.ci/run) runs both on a fresh machine
    (r"^python3 -m venv ", ("skip", "installs into a new venv; .ci/run runs the README's two commands")),
    (r"^raft quickstart$", ("skip", "the whole pipeline (minutes); .ci/run runs it and tests/raft/test_quickstart.py")),
    (r"^raft quickstart --out \S+ --no-eval$", ("skip", "the whole pipeline without eval (minutes)")),
    (r"^python -m pytest", ("skip", "the test suite itself")),
    (r"^python benchmarks/", ("skip", "benchmarks take minutes to hours; they are scripts, not tests")),
    (r"^(export|docker) ", ("skip", "the Docker images (docker/): needs a Docker daemon")),
    (r"^transformers serve ", ("skip", "starts a server that runs until stopped")),
    (r"^python -m serving\.batched ", ("skip", "starts a server that runs until stopped")),
    # need a server, a GPU, a cluster or credentials: run, and they fail as documented
    (r"teacher\.base_url=http://(localhost|127\.0\.0\.1):800[01]/v1", ("error", "is unreachable")),
    (r"judge\.api_key=env:OPENAI_API_KEY", ("error", "the environment variable OPENAI_API_KEY is not set")),
    (r"^raft eval (--data|--config|-c) ", ("error", "is unreachable")),
    (r"^raft train --config configs/train_llama8b_qlora\.yaml", ("error", "could not be resolved on the hub")),
    (r"^raft train --config configs/train_tiny_cpu\.yaml data\.path=runs/quickstart/dataset",
     ("skip", "SmolLM2-135M on 2 Ray workers takes minutes on a CPU; the README's example trains the same "
              "config on the tiny model")),
    (r"^raft export runs/(llama8b-raft|raft-train|quickstart)/adapter ", ("error", "is not an adapter directory")),
    # serve_vllm.yaml's index is out/dataset/index (built here): it stops at the GPU recipe's hub model
    (r"^raft serve --config configs/serve_vllm\.yaml( [^-].*)?$", ("error", "not in the Hugging Face cache")),
    (r"^raft serve --config configs/serve_(cpu|openai)\.yaml( [^-].*)?$", ("error", "does not exist")),
    # runnable, but slow: Ray
    (r"--ray\b", ("slow", "starts Ray")),
    (r"^raft train --config configs/train_tiny_cpu\.yaml model\.name_or_path=out/tiny-model", ("slow", "trains on Ray")),
]


def _commands(text: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments and blank lines dropped, `cmd &` kept."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words) if "&" not in words else " ".join(words))
    return out


def readme_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [c for block in re.findall(r"```bash\n(.*?)```", text, re.S) for c in _commands(block)]


def help_examples() -> list[str]:
    from raft.cli import EXAMPLE, available, command_parser

    texts = [EXAMPLE.split("example:", 1)[1]]
    for name in available():
        parser, _ = command_parser(name)
        texts.append(parser.epilog.split("example:", 1)[1])
        subs = parser._subparsers._group_actions[0].choices if parser._subparsers else {}
        texts += [sub.epilog.split("example:", 1)[1] for sub in subs.values()]  # raft index build, add, ...
    return [c for t in texts for c in _commands(t)]


def _expectation(cmd: str) -> tuple[str, str]:
    for pattern, what in EXPECTED:
        if re.search(pattern, cmd):
            return what
    return ("ok", "")


def _params():
    seen, params = set(), []
    for where, cmds in (("README", readme_examples()), ("--help", help_examples())):
        for cmd in cmds:
            if (where, cmd) in seen:
                continue
            seen.add((where, cmd))
            kind, why = _expectation(cmd)
            marks = [pytest.mark.slow] if kind == "slow" else []
            params.append(pytest.param(cmd, kind, why, id=f"{where}: {cmd[:70]}", marks=marks))
    return params


# ---- the scratch directory --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_model_dir):
    """A directory laid out like a clone (configs/, raft/quickstart/) with every input the examples name.
    Outputs the examples expect from earlier steps (out/dataset, out/index, idx) are built here too, so
    an example also runs when those before it were skipped."""
    root = tmp_path_factory.mktemp("examples")
    work = root / "work"
    shutil.copytree(REPO / "configs", work / "configs", symlinks=False)
    qs = work / "raft" / "quickstart"
    shutil.copytree(REPO / "raft" / "quickstart" / "corpus", qs / "corpus")
    for f in ("questions.jsonl", "train_questions.jsonl", "quickstart_cpu.yaml"):
        shutil.copy(REPO / "raft" / "quickstart" / f, qs / f)
    corpus = REPO / "raft" / "quickstart" / "corpus"
    (work / "docs").mkdir()
    records = []
    for name in DOCS:
        src = corpus / f"veloria_{name}.md"
        shutil.copy(src, work / "docs" / src.name)
        text = src.read_text()
        records.append({"id": src.name, "title": text.splitlines()[0].lstrip("# "), "text": text})
    (work / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    questions = [json.loads(x) for x in (qs / "train_questions.jsonl").read_text().splitlines() if x.strip()]
    questions = [q for q in questions if set(q["gold_ids"]) <= {r["id"] for r in records}][:12]
    (work / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (work / "new.md").write_text("# Zorblat\n\nThe Zorblat festival fills the harbour with lanterns each spring.\n")
    (work / "more_docs").mkdir()
    (work / "more_docs" / "ferries.md").write_text("# Ferries\n\nThe night ferry leaves Portivel at ten.\n")
    (work / "more_docs" / "api.jsonl").write_text(json.dumps(
        {"id": "torchhub:12", "title": "hub.load", "text": "torch.hub.load(repo, model) loads a model."}) + "\n")
    (work / "new_docs").mkdir()
    (work / "new_docs" / "a.md").write_text("# Lighthouse\n\nThe Hask lighthouse was rebuilt in stone.\n")
    (work / "new_docs" / "b.pdf").write_bytes(text_pdf("The salt museum opened in the old customs house."))
    hotpot = root / "shared" / "data" / "hotpotqa_hippo"  # ../shared/data/... from the work directory
    hotpot.mkdir(parents=True)
    shutil.copy(work / "corpus.jsonl", hotpot / "corpus.jsonl")
    (work / "out").mkdir()
    shutil.copytree(tiny_model_dir, work / "out" / "tiny-model")
    for cmd in ("raft build docs/ --out out/dataset teacher.kind=extractive mix.num_distractors=3 --quiet "
                "split.train=0.6 split.validation=0.2 split.test=0.2",
                "raft index build docs/ --out out/index", "raft index build docs/ --out idx"):
        rc, out = _run(cmd, work)
        assert rc == 0, out[-2000:]
    return work


def _run(cmd: str, cwd: Path, subprocess_: bool = False) -> tuple[int, str]:
    """Run a `raft ...` line in `cwd` as a user would (no OPENAI_API_KEY, no RAY_ADDRESS, 120 columns);
    (exit code, stdout + stderr). In this process unless `subprocess_` (what starts Ray): the embedder
    and the libraries load once for all the examples."""
    import contextlib
    import io

    words = shlex.split(cmd)
    assert words[0] == "raft", cmd
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120"}
    if subprocess_:
        full = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")} | env
        r = subprocess.run([sys.executable, "-m", "raft.cli", *words[1:]], cwd=cwd, env=full, capture_output=True,
                           text=True, timeout=900)
        return r.returncode, r.stdout + r.stderr
    from raft.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    buf = io.StringIO()
    try:
        os.environ.update(env)
        for k in ("OPENAI_API_KEY", "RAY_ADDRESS"):
            os.environ.pop(k, None)
        os.chdir(cwd)
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                rc = main(words[1:])
            except SystemExit as e:  # argparse
                rc = e.code
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return rc, buf.getvalue()


@pytest.mark.parametrize("cmd,kind,why", _params())
def test_documented_example(cmd, kind, why, scratch):
    if kind == "skip":
        pytest.skip(why)
    assert cmd.startswith("raft "), f"{cmd!r} is not a raft command: add it to EXPECTED with what to do"
    rc, out = _run(cmd, scratch, subprocess_=kind == "slow")
    assert "Traceback" not in out, out[-3000:]
    if kind == "error":
        assert rc == 2 and why in out, f"expected exit 2 with {why!r}, got {rc}:\n{out[-2000:]}"
        return
    assert rc == 0, out[-3000:]


def test_every_example_is_found():
    """The collection itself: a README without bash blocks or a --help without examples is a bug here."""
    readme, helps = readme_examples(), help_examples()
    assert any(c.startswith("raft index build") for c in readme) and any(c.startswith("raft eval") for c in readme)
    for verb in ("index build", "index add", "index delete", "index stats", "index search", "build", "train",
                 "export", "serve", "eval", "quickstart"):
        assert any(c.startswith(f"raft {verb}") for c in helps), verb
