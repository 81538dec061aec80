"""`raft eval` end to end against a deterministic fake OpenAI server started in the test."""

import json
import socket
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, fact

from raft.cli import main
from raft.config import ConfigError, load_config
from raft.errors import RaftError
from raft.eval.config import EvalConfig
from raft.eval.data import load_items
from raft.prompt import render_user

REPO = Path(__file__).resolve().parents[3]
NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
VALUES = ["red", "green", "blue", "amber", "violet", "olive"]
CORPUS = {f"doc{i}": (n, v) for i, (n, v) in enumerate(zip(NAMES, VALUES))}


def raft_record(i: int) -> dict:
    """A RAFT record: the oracle fact shown last after two distractors (chunk ids c-docN)."""
    shown = [(i + 1) % 6, (i + 2) % 6, i]
    docs = [{"title": NAMES[j], "text": fact(NAMES[j], VALUES[j])} for j in shown]
    q = f"What is the key of {NAMES[i]}?"
    return {"id": f"q{i}", "type": "general", "question": q,
            "context": {"title": [[d["title"] for d in docs]], "sentences": [[d["text"] for d in docs]]},
            "oracle_context": fact(NAMES[i], VALUES[i]), "instruction": render_user(q, docs),
            "cot_answer": f"##begin_quote##{fact(NAMES[i], VALUES[i])}##end_quote##\n<ANSWER>: {VALUES[i]}",
            "doc_ids": [f"c-doc{j}" for j in shown], "oracle_ids": [f"c-doc{i}"], "oracle_included": True,
            "final_answer": VALUES[i], "split": "test"}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A `raft build`-shaped directory: raft/test.jsonl and eval/test.jsonl."""
    out = tmp_path / "ds"
    (out / "raft").mkdir(parents=True)
    (out / "eval").mkdir()
    recs = [raft_record(i) for i in range(6)]
    (out / "raft" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "eval" / "test.jsonl").write_text("".join(json.dumps({
        "id": r["id"], "question": r["question"], "answers": [r["final_answer"]],
        "gold_ids": [f"doc{i}"], "doc_ids": r["doc_ids"], "oracle_ids": r["oracle_ids"]}) + "\n"
        for i, r in enumerate(recs)))
    return out


@pytest.fixture
def server():
    with FakeOpenAI(CORPUS) as s:
        yield s


def test_load_items_from_eval_split_joins_raft_records(dataset):
    items = load_items(str(dataset))
    assert len(items) == 6 and items[0].gold_doc_ids == ["doc0"] and items[0].gold_chunk_ids == ["c-doc0"]
    assert [d["oracle"] for d in items[0].shown] == [False, False, True]
    assert items[0].oracle_docs[0]["text"] == fact("alpha", "red")
    plain = load_items(str(dataset / "raft" / "test.jsonl"), limit=2)
    assert len(plain) == 2 and plain[1].answers == ["green"] and plain[1].gold_doc_ids == []


def test_bad_lines_are_named(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": 1, "question": "q?", "answers": ["a"]}\n{not json}\n')
    with pytest.raises(RaftError, match=r"q.jsonl:2: not valid JSON"):
        load_items(str(bad))
    bad.write_text('{"id": 1, "answers": ["a"]}\n')
    with pytest.raises(RaftError, match=r"q.jsonl:1: field 'question'"):
        load_items(str(bad))
    with pytest.raises(RaftError, match="does not exist"):
        load_items(str(tmp_path / "missing.jsonl"))


def test_config_files_load_and_errors_are_collected():
    for path in sorted((REPO / "configs").glob("eval_*.yaml")):
        cfg = load_config(EvalConfig, path, section="eval")
        assert cfg.systems and all(s.retrieval in ("off", "gateway", "local", "record") for s in cfg.systems)
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, ["concurrency=0", "k_values=[0]", "bogus=1"])
    text = str(e.value)
    assert "concurrency" in text and "k_values" in text and "bogus: unknown key" in text
    with pytest.raises(ConfigError, match="retrieval: local"):
        load_config(EvalConfig, None, ['systems=[{"name": "a", "model": "m", "retrieval": "local"}]'])


def write_config(tmp_path, server, dataset, **extra) -> Path:
    cfg = {"eval": {
        "data": str(dataset / "eval" / "test.jsonl"),
        "systems": [
            {"name": "base", "base_url": server.base_url, "model": "reader", "retrieval": False},
            {"name": "base+RAG", "base_url": server.base_url, "model": "first-doc", "retrieval": "record"},
            {"name": "RAFT+RAG", "base_url": server.base_url, "model": "reader", "retrieval": "gateway",
             "top_k": 3},
        ],
        "sweep": {"top_k": [1, 2], "distractors": [0, 2, 4]},
        "judge": {"enabled": True, "base_url": server.base_url, "model": "judge"},
        "concurrency": 4, "out": str(tmp_path / "report"), **extra}}
    path = tmp_path / "eval.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_end_to_end_against_fake_server(tmp_path, server, dataset):
    cfg_path = write_config(tmp_path, server, dataset)
    assert main(["eval", "--config", str(cfg_path)]) == 0
    out = tmp_path / "report"
    report = json.loads((out / "report.json").read_text())
    runs = {r["label"]: r for r in report["runs"]}
    # closed book: the reader sees no documents and says "unknown"
    assert runs["base"]["em"] == 0.0 and runs["base"]["recall@1"] is None and runs["base"]["judge"] == 1.0
    # the confused reader answers from the first shown doc, which is a distractor in every record
    assert runs["base+RAG"]["em"] == 0.0 and runs["base+RAG"]["quotes"] == 0
    # the gateway puts the gold doc at rank 2: recall@1 = 0, recall@3 = 1, MRR = 0.5; the reader finds it
    g = runs["RAFT+RAG"]
    assert (g["em"], g["f1"], g["recall@1"], g["recall@3"], g["mrr"]) == (1.0, 1.0, 0.0, 1.0, 0.5)
    assert g["recall@5"] is None  # deeper than top_k=3: not measurable
    assert (g["quote_validity"], g["citation_precision"], g["citation_recall"], g["judge"]) == (1.0, 1.0, 1.0, 4.0)
    assert g["answer_tag_rate"] == 1.0 and g["errors"] == 0 and g["n"] == 6
    # top-k sweep: with k=1 the gold doc is not retrieved, so the reader cannot answer
    assert runs["RAFT+RAG top_k=1"]["em"] == 0.0 and runs["RAFT+RAG top_k=2"]["em"] == 1.0
    # distractor sweep: the reader stays right; the first-doc reader is right only with 0 distractors
    for n in (0, 2, 4):
        assert runs[f"RAFT+RAG distractors={n}"]["em"] == 1.0
    assert runs["base+RAG distractors=0"]["em"] == 1.0
    assert runs["base+RAG distractors=4"]["em"] < 0.5
    # the documents shown in the sweep: oracle + n distractors, rendered by the RAFT prompt
    sweep_reqs = [r for r in server.requests if r["model"] == "first-doc"
                  and r["messages"][-1]["content"].count("<DOCUMENT>") == 5]
    assert len(sweep_reqs) == 6
    # gateway requests carry the retrieval extension; a distractor-sweep request to the gateway turns it off
    gw = [r for r in server.requests if (r.get("retrieval") or {}).get("enabled")]
    assert {r["retrieval"]["top_k"] for r in gw} == {1, 2, 3}
    assert any(r.get("retrieval") == {"enabled": False} for r in server.requests)
    # the report files
    md = (out / "report.md").read_text()
    assert "| RAFT+RAG | gateway | reader | 1.000 | 1.000 |" in md
    assert "Robustness: distractors" in md and "sweep_distractors.png" in md
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == sum(r["n"] for r in report["runs"])
    assert {p["prediction"] for p in preds if p["system"] == "RAFT+RAG" and p["sweep"] == "main"} == set(VALUES)
    for png in ("systems.png", "sweep_top_k.png", "sweep_distractors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["config"]["concurrency"] == 4


def test_endpoints_run_side_by_side_and_a_repeated_sweep_point_is_not_asked_again(tmp_path, dataset):
    """base runs (engine A) overlap RAFT runs (gateway B); top_k=3 of the sweep reuses the main run's answers."""
    with FakeOpenAI(CORPUS, delay=0.05) as a, FakeOpenAI(CORPUS, delay=0.05) as b:
        cfg = {"eval": {"data": str(dataset / "eval" / "test.jsonl"), "concurrency": 2,
                        "out": str(tmp_path / "report"), "sweep": {"top_k": [1, 3], "systems": ["RAFT+RAG"]},
                        "systems": [
                            {"name": "base", "base_url": a.base_url, "model": "reader", "retrieval": "off"},
                            {"name": "base+RAG", "base_url": a.base_url, "model": "first-doc",
                             "retrieval": "record"},
                            {"name": "RAFT+RAG", "base_url": b.base_url, "model": "reader",
                             "retrieval": "gateway", "top_k": 3}]}}
        import yaml

        (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    assert sorted(r["retrieval"]["top_k"] for r in b.requests) == [1] * 6 + [3] * 6  # not 3 x 12
    runs = {r["label"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["runs"]}
    same = ("em", "f1", "recall@3", "quote_validity", "n")
    assert [runs["RAFT+RAG top_k=3"][k] for k in same] == [runs["RAFT+RAG"][k] for k in same]
    assert [r["label"] for r in runs.values()] == ["base", "base+RAG", "RAFT+RAG", "RAFT+RAG top_k=1",
                                                   "RAFT+RAG top_k=3"]
    # with 2 requests in flight per endpoint, one at a time would be 2 x as long: the two endpoints overlapped
    overlap = min(a.spans[-1][1], b.spans[-1][1]) - max(a.spans[0][0], b.spans[0][0])
    assert overlap > 0.1


def test_a_systems_extra_body_reaches_its_requests_only(tmp_path, server, dataset):
    """`extra_body` (e.g. the batched engine's quote_guard) is sent with each request of its system, beside the
    retrieval extension eval sets; fields eval sets itself are refused with what to use instead."""
    cfg = {"eval": {"data": str(dataset / "eval" / "test.jsonl"), "out": str(tmp_path / "report"), "systems": [
        {"name": "guarded", "base_url": server.base_url, "model": "reader", "retrieval": "gateway", "top_k": 3},
        {"name": "free", "base_url": server.base_url, "model": "first-doc", "retrieval": "gateway", "top_k": 3,
         "extra_body": {"quote_guard": False, "top_k": 20}}]}}
    import yaml

    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    free = [r for r in server.requests if r["model"] == "first-doc"]
    assert len(free) == 6 and all(r["quote_guard"] is False and r["top_k"] == 20 for r in free)
    assert all(r["retrieval"]["enabled"] and r["retrieval"]["top_k"] == 3 for r in free)
    assert not any("quote_guard" in r for r in server.requests if r["model"] == "reader")
    with pytest.raises(ConfigError, match="extra_body sets max_tokens, retrieval, which raft eval sets itself"):
        load_config(EvalConfig, None, ['systems=[{"name": "a", "model": "m", '
                                       '"extra_body": {"retrieval": {}, "max_tokens": 9}}]'])


def test_sweep_only_skips_the_main_runs(tmp_path, server, dataset):
    cfg_path = write_config(tmp_path, server, dataset, sweep={"distractors": [0, 2], "only": True})
    assert main(["eval", "--config", str(cfg_path)]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["sweep"] for r in report["runs"]} == {"distractors"}
    answers = (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()
    assert len(answers) == 4 * 6 and len(server.requests) == 2 * len(answers)  # + one judge call each
    assert "Robustness: distractors" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ConfigError, match="sweep.only=true runs only the sweeps"):
        load_config(EvalConfig, None, ["sweep.only=true"])


def test_sweep_points_run_in_the_order_given_and_the_report_sorts_them(tmp_path, server, dataset):
    """The point that matters most can go first (a stopped run then has it); the report reads in order."""
    cfg_path = write_config(tmp_path, server, dataset, sweep={"distractors": [2, 0, 2], "only": True})
    assert main(["eval", "--config", str(cfg_path)]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["value"] for r in report["runs"] if r["system"] == report["runs"][0]["system"]] == [2, 0]
    answers = [json.loads(x) for x in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert [a["value"] for a in answers[:6]] == [2] * 6  # asked first
    md = (tmp_path / "report" / "report.md").read_text().split("Robustness: distractors")[1]
    first = report["runs"][0]["system"]
    rows = [ln for ln in md.splitlines() if ln.startswith(f"| {first} |")]
    assert [ln.split("|")[2].strip() for ln in rows] == ["0", "2"]


def test_convenience_flags_and_questions_file(tmp_path, server, capsys):
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps({"id": f"x{i}", "question": f"What is the key of {n}?", "answers": [v],
                                      "gold_ids": [f"doc{i}"]}) + "\n"
                          for i, (n, v) in enumerate(zip(NAMES, VALUES))))
    rc = main(["eval", "--data", str(qs), "--base-url", server.base_url, "--model", "reader",
               "--retrieval", "gateway", "--top-k", "2", "--out", str(tmp_path / "r"), "k_values=[1,2]"])
    assert rc == 0
    run = json.loads((tmp_path / "r" / "report.json").read_text())["runs"][0]
    assert run["system"] == "reader" and run["em"] == 1.0 and run["recall@2"] == 1.0 and run["mrr"] == 0.5
    assert "report:" in capsys.readouterr().err


def test_unreachable_endpoint_fails_fast(tmp_path, dataset, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    rc = main(["eval", "--data", str(dataset), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
               "--out", str(tmp_path / "r"), "connect_timeout=2"])
    assert rc == 2 and time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "unreachable" in err and str(port) in err
    assert not (tmp_path / "r" / "report.json").exists()


def test_failed_requests_are_counted_not_fatal(tmp_path, server, dataset):
    cfg_path = write_config(tmp_path, server, dataset)
    # every chat completion fails (the start-up check of /models passes: a wrong base URL stops it there)
    server.chat_status = 404
    assert main(["eval", "--config", str(cfg_path), "judge.enabled=false", "sweep.top_k=[]",
                 "sweep.distractors=[]",
                 f'systems=[{{"name": "bad", "base_url": "{server.base_url}", "model": "reader"}}]']) == 1
    run = json.loads((tmp_path / "report" / "report.json").read_text())["runs"][0]
    assert run["errors"] == 6 and run["em"] is None and "404" in run["first_error"]


@pytest.mark.slow  # embeds with the bundled MiniLM: seconds alone, minutes on a busy 2-core machine
def test_local_retrieval_against_a_real_index(tmp_path, server, embedder_path):
    """A plain engine with retrieval done by the eval client: RetrievalIndex search -> RAFT prompt."""
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex
    from retrieval.types import Document

    docs = [Document(doc_id, fact(n, v), title=n) for doc_id, (n, v) in CORPUS.items()]
    RetrievalIndex.build(docs, tmp_path / "idx", IndexConfig(embedder=embedder_path)).close()
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": f"x{i}", "question": f"What is the key of {n}?", "answers": [v],
                                      "gold_ids": [d]}) + "\n" for i, (d, (n, v)) in enumerate(CORPUS.items())))
    rc = main(["eval", "--data", str(qs), "--out", str(tmp_path / "r"), f"index={tmp_path / 'idx'}",
               f'systems=[{{"name": "rag", "base_url": "{server.base_url}", "model": "reader", '
               '"retrieval": "local", "top_k": 3, "search_mode": "bm25"}]', "sweep.top_k=[1]"])
    assert rc == 0
    runs = {r["label"]: r for r in json.loads((tmp_path / "r" / "report.json").read_text())["runs"]}
    # BM25 finds the one document that names the key: first rank, so the reader answers everything
    assert runs["rag"]["recall@1"] == 1.0 and runs["rag"]["mrr"] == 1.0 and runs["rag"]["em"] == 1.0
    assert runs["rag"]["quote_validity"] == 1.0 and runs["rag"]["citation_precision"] == 1.0
    assert runs["rag top_k=1"]["em"] == 1.0
    # the engine saw the RAFT prompt with exactly top_k rendered documents
    shown = [r["messages"][-1]["content"].count("<DOCUMENT>") for r in server.requests]
    assert sorted(set(shown)) == [1, 3]
