"""`raft build`: turn a corpus into a RAFT dataset (questions, verified CoT answers, distractors, splits)."""

from __future__ import annotations

import argparse

from raft.commands.common import add_config_arguments, load_command_config

HELP = "build a RAFT dataset from a corpus with a teacher model (or the offline extractive smoke teacher)"
EXAMPLE = """raft build docs/ --out data/raft teacher.kind=openai teacher.base_url=http://localhost:8000/v1 teacher.model=Qwen/Qwen2.5-7B-Instruct
raft build corpus.jsonl --out data/raft --questions questions.jsonl   # your own questions + gold doc ids
raft build docs/ --out data/smoke teacher.kind=extractive mix.num_distractors=3
raft build docs/ --out data/ray --ray ray_actors=2   # answers on Ray: the $RAY_ADDRESS cluster, else a local one
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", nargs="?", help="corpus file or folder (what `raft index build` accepts); may be "
                   "omitted with --index")
    p.add_argument("--out", "-o", metavar="DIR", help="dataset directory to write (and resume); required")
    p.add_argument("--questions", metavar="FILE", help="JSONL {id, question, answers, gold_ids}: skip question "
                   "generation (= build.questions_file)")
    p.add_argument("--index", metavar="DIR", help="reuse an existing index directory (= build.index_dir)")
    p.add_argument("--ray", action="store_true", help="answer the questions through Ray Data with a pool of "
                   "teacher actors (= build.ray=true; build.ray_actors sets the pool size): on the cluster named by "
                   "$RAY_ADDRESS, else on a local Ray; same cache, checks and records as without --ray")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    add_config_arguments(p, "build")  # raft/cli.py parses intermixed: CORPUS, options and overrides in any order


def run(args: argparse.Namespace) -> int:
    from raft.commands.common import override_not_positional
    from raft.data.config import BuildConfig
    from raft.errors import RaftError

    extra = []
    override_not_positional(args, "corpus")  # no CORPUS given (--index): it was an override
    if args.questions:
        extra.append(f"questions_file={args.questions}")
    if args.index:
        extra.append(f"index_dir={args.index}")
    if args.quiet:
        extra.append("progress=false")
    if args.ray:
        extra.append("ray=true")
    # flags first, so an explicit override of the same key wins (docs/configuration.md, as in raft eval)
    args.overrides = extra + list(args.overrides)
    cfg = load_command_config(args, BuildConfig, "build")
    if cfg is None:
        return 0
    if not args.out:
        raise RaftError("raft build needs --out DIR (the dataset directory), e.g. raft build docs/ --out data/raft")
    from rich.console import Console

    from raft.commands.common import OutputGuard, absolute, check_writable
    from raft.data.builder import Builder
    from raft.data.summary import print_summary
    from raft.model_source import resolve_model

    console = Console(stderr=True, soft_wrap=True)  # paths in the summary stay whole, copyable
    # absolute, as the index and any Ray workers see them; the dataset records them in its config
    corpus, out = absolute(args.corpus), absolute(args.out)
    cfg.questions_file, cfg.index_dir = absolute(cfg.questions_file), absolute(cfg.index_dir)
    check_writable(out, "--out")
    if cfg.teacher.kind != "extractive":  # a packaged name or .gguf becomes the converted directory
        cfg.teacher = cfg.teacher.model_copy(
            update={"model": resolve_model(cfg.teacher.model, log=console.print, absolute=False)})
    if cfg.ray:  # as `raft index build --ray`: join $RAY_ADDRESS, else start a local Ray, quietly
        from raft.commands.index import _init_ray

        _init_ray()
    with OutputGuard(out, "raft build", remove_new_dir=False,
                     kept=f"the teacher cache in {out}/.cache is kept, so a rerun repeats no teacher call"):
        summary = Builder(cfg, out, corpus=corpus, console=console).run()
    print_summary(summary, console)
    return 0
