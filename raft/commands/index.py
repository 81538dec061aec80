"""`raft index`: build, update, inspect and search a retrieval index directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from raft.commands.common import add_config_arguments

HELP = "build, update, inspect and search a retrieval index (FAISS + BM25, hybrid)"
EXAMPLE = """raft index build docs/ --out idx chunk_size=256 index_type=hnsw
raft index add idx new_docs/a.md new_docs/b.pdf
raft index delete idx a.md b.pdf
raft index stats idx
raft index search idx --queries questions.jsonl -k 5 --json
raft index search idx "what does RAFT train?" -k 5 --mode hybrid --filter tenant=acme
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="load, chunk, embed and index a corpus (a file or a directory)",
                       description="Load, chunk, embed and index a corpus (a file or a directory) in --out DIR.",
                       epilog="example:\n  raft index build docs/ --out idx chunk_size=256\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("corpus", metavar="CORPUS", nargs="?",
                   help="file or directory (.txt .md .html .pdf .json .jsonl)")
    b.add_argument("--out", "-o", metavar="DIR", help="index directory to write (replaced atomically)")
    b.add_argument("--ray", action="store_true", help="embed through Ray Data with an embedder actor pool")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_arguments(b, "index")  # raft/cli.py parses intermixed: CORPUS, options, overrides in any order

    a = sub.add_parser("add", help="add (or replace) documents in an existing index",
                       epilog="example:\n  raft index add idx new.md more_docs/\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("index", metavar="DIR", help="index directory (what `raft index build` wrote)")
    a.add_argument("files", metavar="FILES", nargs="+", help="files or directories; a file under the corpus "
                   "root the index was built from gets the id that build gave it (its path relative to that root), "
                   "so an edited file replaces its old version; a file elsewhere gets its name (a directory: "
                   "paths inside it); a JSONL record keeps its own id")

    d = sub.add_parser("delete", help="delete documents (all their chunks) by document id",
                       epilog="example:\n  raft index delete idx new.md torchhub:12\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("index", metavar="DIR", help="index directory (what `raft index build` wrote)")
    d.add_argument("ids", metavar="IDS", nargs="+", help="document ids")

    s = sub.add_parser("stats", help="what an index holds", epilog="example:\n  raft index stats idx\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("index", metavar="DIR", help="index directory (what `raft index build` wrote)")
    s.add_argument("--json", action="store_true", help="print JSON")

    q = sub.add_parser("search", help="query an index",
                       epilog="example:\n  raft index search idx \"what is RAFT?\" -k 5 --filter tenant=acme\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("index", metavar="DIR", help="index directory (what `raft index build` wrote)")
    q.add_argument("query", metavar="QUERY", nargs="?", help="the query text (or use --queries)")
    q.add_argument("-k", type=int, default=5, help="results per query (default 5)")
    q.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid",
                   help="hybrid: dense and BM25 fused; dense: embeddings only; bm25: keywords only "
                   "(default hybrid)")
    q.add_argument("--filter", action="append", metavar="key=value",
                   help="exact match on metadata (or doc_id/source); repeat a key for any-of")
    q.add_argument("--queries", metavar="FILE.jsonl", help="one JSON object per line with `id` and `question`")
    q.add_argument("--json", action="store_true", help='one JSON line per query: {"id", "results": [...]}')
    q.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="queries embedded together with --queries (default 64)")
    q.add_argument("--rerank", metavar="MODEL", help="re-score the first candidates with this cross-encoder "
                   "(a `raft rerank train` output directory or a CrossEncoder name) and keep the best k")
    # None, not 40: a value given without --rerank is refused rather than ignored (40 applied in _search)
    q.add_argument("--rerank-candidates", type=int, default=None, metavar="N",
                   help="hits re-scored per query with --rerank (default 40)")
    q.add_argument("--rerank-weight", type=float, default=None, metavar="W",
                   help="share of the reranker in the order with --rerank, 0..1 (1: its order alone, 0: the "
                   "search's); default: the weight `raft rerank train` chose")


def run(args: argparse.Namespace) -> int:
    return {"build": _build, "add": _add, "delete": _delete, "stats": _stats, "search": _search}[args.action](args)


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _build(args) -> int:
    import json

    from raft.commands.common import OutputGuard, absolute, check_writable, load_command_config, override_not_positional
    from retrieval.config import IndexConfig
    from retrieval.errors import RetrievalError
    from retrieval.index import RetrievalIndex

    override_not_positional(args, "corpus")
    cfg = load_command_config(args, IndexConfig, "index")
    if cfg is None:
        return 0
    if not args.corpus or not args.out:
        raise RetrievalError("raft index build needs a CORPUS (file or directory) and --out DIR, e.g. "
                             "raft index build docs/ --out idx")
    corpus, out = absolute(args.corpus), absolute(args.out)
    # the store holds at least the corpus text: a lower bound of what the disk must take (PDFs excluded)
    check_writable(out, "--out", need_bytes=_text_bytes(corpus))
    if args.ray:
        cfg = cfg.model_copy(update={"ray": True})
    con = _console()
    con.print(f"building index of [bold]{args.corpus}[/] -> [bold]{args.out}[/] "
              f"(embedder {cfg.embedder}, chunk {cfg.chunk_size}/{cfg.chunk_overlap} tokens"
              f"{', Ray Data' if cfg.ray else ''})")
    if cfg.ray:
        _init_ray()
    with OutputGuard(out, "raft index build", tidy=lambda: _sweep_unfinished(out)):
        idx = RetrievalIndex.build(corpus, out, cfg, show_progress=not args.json)
    s = idx.build_summary
    if args.json:
        print(json.dumps(s | {"skipped": [{"path": p, "reason": r} for p, r in s["skipped"]]}))
        return 0
    con.print(f"[green]done[/] in {s['seconds']:.1f}s: {s['documents']} documents, {s['chunks']} chunks "
              f"({s['embedded']} embedded, {s['cached']} from cache), FAISS {s['index_type']}, written to {s['path']}")
    if s["skipped"]:
        con.print(f"[yellow]skipped {len(s['skipped'])} file(s)/record(s):[/]")
        for p, r in s["skipped"][:50]:
            con.print(f"  {p}: {r}")
        if len(s["skipped"]) > 50:
            con.print(f"  ... and {len(s['skipped']) - 50} more")
    return 0


def _text_bytes(corpus: str) -> int:
    from pathlib import Path

    p = Path(corpus)
    if not p.exists():
        return 0  # load_corpus says so, with the usual message
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if f.suffix.lower() != ".pdf")


def _sweep_unfinished(index_dir: str) -> None:
    """Remove the files of a generation whose save failed (the manifest still names the previous one)."""
    from retrieval.errors import RetrievalError
    from retrieval.generations import read_manifest, sweep

    try:
        sweep(Path(index_dir), read_manifest(index_dir))
    except (RetrievalError, OSError):
        pass


def _init_ray() -> None:
    import os

    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)


def _add(args) -> int:
    import time

    from raft.commands.common import OutputGuard, check_writable
    from retrieval.errors import RetrievalError
    from retrieval.index import RetrievalIndex
    from retrieval.loaders import load_corpus

    t0 = time.time()
    idx = RetrievalIndex.open(args.index)
    # a write adds a small segment, but the merge it may start rewrites up to the whole index
    check_writable(args.index, "index", need_bytes=sum(f["bytes"] for f in idx.manifest["files"].values()))
    docs, skipped = [], []
    c = idx.config
    for f in args.files:
        d, s = load_corpus(f, c.id_field, c.title_field, c.text_field, corpus_root=idx.corpus_root)
        docs += d
        skipped += s
    con = _console()
    for p, r in skipped:
        con.print(f"  [yellow]skipped[/] {p}: {r}")
    if not docs:
        raise RetrievalError(f"nothing to add: no usable document in {', '.join(args.files)}"
                             + (f" ({len(skipped)} skipped, listed above)" if skipped else ""))
    present = set(idx.doc_ids())
    replaced = [d.doc_id for d in docs if d.doc_id in present]
    with OutputGuard(args.index, "raft index add", remove_new_dir=False, tidy=lambda: _sweep_unfinished(args.index)):
        ids = idx.add_documents(docs)
        total = len(idx)
        idx.close()  # waits for a merge the write started: a process that exits mid-merge wastes it
    con.print(f"added {len(docs)} document(s) ({len(docs) - len(replaced)} new, {len(replaced)} replaced) as "
              f"{len(ids)} chunk(s) to {args.index} in {time.time() - t0:.1f}s; index now holds {total} chunks")
    return 0


def _delete(args) -> int:
    from raft.commands.common import check_writable
    from retrieval.errors import RetrievalError
    from retrieval.index import RetrievalIndex

    idx = RetrievalIndex.open(args.index)
    present = set(idx.doc_ids())
    unknown = [d for d in dict.fromkeys(args.ids) if d not in present]
    if unknown:
        raise RetrievalError(f"{len(unknown)} of {len(set(args.ids))} document id(s) are not in {args.index}: "
                             + ", ".join(_with_suggestion(d, present) for d in unknown[:20])
                             + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
                             + "; nothing was deleted (`raft index stats` counts documents; ids are paths relative "
                             "to the corpus root, or a JSONL record's id)")
    check_writable(args.index, "index", need_bytes=sum(f["bytes"] for f in idx.manifest["files"].values()))
    n = idx.delete_documents(args.ids)
    remain = len(idx)
    idx.close()  # waits for a merge the delete started (see _add)
    _console().print(f"deleted {n} chunk(s) of {len(set(args.ids))} document id(s) from {args.index}; "
                     f"{remain} chunks remain")
    return 0


def _with_suggestion(doc_id: str, present: set[str]) -> str:
    """`x.md` -> `'x.md' (did you mean 'sub/x.md'?)` when an id in the index ends with it or is close."""
    import difflib

    tail = [p for p in present if p.endswith("/" + doc_id)]
    close = tail[:2] or difflib.get_close_matches(doc_id, list(present), n=2, cutoff=0.8)
    return repr(doc_id) + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")


def _stats(args) -> int:
    import json

    from retrieval.index import RetrievalIndex

    st = RetrievalIndex.open(args.index).stats()  # verify: checksums, so damage is reported here
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k:>14}: {v}")
    return 0


def _read_queries(path: str) -> list[tuple[str, str]]:
    from pathlib import Path

    from raft.jsonl import iter_jsonl
    from retrieval.errors import RetrievalError

    if not Path(path).is_file():
        raise RetrievalError(f"queries file {path!r} does not exist")
    out = []
    for n, rec in iter_jsonl(path, RetrievalError):
        q = rec.get("question", rec.get("query"))
        if not isinstance(q, str) or not q.strip():
            raise RetrievalError(f"{path}:{n}: needs a non-empty `question` field")
        out.append((str(rec.get("id", n)), q))
    return out


def _fit(text: str, width: int) -> str:
    if width <= 1:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)].rstrip() + "…"


def _search(args) -> int:
    import json
    import shutil

    from retrieval.errors import RetrievalError
    from retrieval.filters import parse_filter_args
    from retrieval.index import RetrievalIndex
    from retrieval.rerank import MAX_CANDIDATES

    if args.k <= 0:
        raise RetrievalError(f"-k must be a positive integer, got {args.k}")
    if args.batch_size <= 0:
        raise RetrievalError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not args.rerank:  # they only tune the rerank stage: without it they would silently do nothing
        given = [f for f, v in (("--rerank-candidates", args.rerank_candidates),
                                ("--rerank-weight", args.rerank_weight)) if v is not None]
        if given:
            raise RetrievalError(f"{' and '.join(given)} {'need' if len(given) > 1 else 'needs'} --rerank MODEL "
                                 "(a `raft rerank train` output directory or a CrossEncoder name); without it "
                                 "there is no reranking to tune")
    elif args.rerank_candidates is None:
        args.rerank_candidates = 40
    elif not 1 <= args.rerank_candidates <= MAX_CANDIDATES:
        raise RetrievalError(f"--rerank-candidates must be an integer from 1 to {MAX_CANDIDATES}, got "
                             f"{args.rerank_candidates}")
    flt = parse_filter_args(args.filter)
    if args.queries:
        queries = _read_queries(args.queries)
    elif args.query:
        queries = [("0", args.query)]
    else:
        raise RetrievalError("give a QUERY or --queries FILE.jsonl")
    reranker = None
    if args.rerank:
        from raft.commands.common import absolute
        from retrieval.rerank import Reranker

        # loaded before the index opens: a wrong model path fails at once, with its own message
        reranker = Reranker(absolute(args.rerank, must_exist=True), args.rerank_candidates,
                            weight=args.rerank_weight).load()
    idx = RetrievalIndex.open(args.index)  # verify: checksums, so a damaged file is named, not a traceback
    width = max(40, shutil.get_terminal_size().columns)  # COLUMNS honoured; piped output gets 80
    for i in range(0, len(queries), args.batch_size):
        part = queries[i:i + args.batch_size]
        results = idx.search_batch([q for _, q in part], k=args.k, mode=args.mode, filter=flt or None,
                                   rerank=reranker)
        for (qid, q), hits in zip(part, results):
            rows = [{"chunk_id": h.chunk.chunk_id, "doc_id": h.chunk.doc_id, "score": round(float(h.score), 6),
                     "title": h.chunk.title, "text": h.chunk.text} for h in hits]
            if args.json:
                print(json.dumps({"id": qid, "results": rows}, ensure_ascii=False), flush=True)
            else:
                print(f"query {qid}: {q}")
                for r, row in enumerate(rows, 1):
                    head = f"  {r}. [{row['score']:.4f}] {row['doc_id']} ({row['chunk_id']})"
                    print(head + _fit(" " + (row["title"] or ""), width - len(head)))  # ids are never cut
                    print("     " + _fit(" ".join(row["text"].split()), width - 5))
    return 0
