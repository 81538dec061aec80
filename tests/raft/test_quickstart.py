"""The shipped quickstart data and what the quickstart tells its user (the full run is `.ci/run`'s job)."""

from __future__ import annotations

import json

import yaml

from raft.data.teachers import sentences
from raft.prompt import normalize_for_match
from raft.quickstart import CONFIG, CORPUS, QUESTIONS, TRAIN_QUESTIONS
from raft.quickstart.pipeline import conclusion


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_held_out_questions_are_natural_unseen_and_answerable():
    held, train = _rows(QUESTIONS), _rows(TRAIN_QUESTIONS)
    assert len(held) >= 30 and len(train) >= 60
    assert not {q["question"] for q in held} & {q["question"] for q in train}
    # no training answer quotes the sentence that answers a held-out question: the extractive teacher quotes
    # the sentence of the gold document that holds the answer, so the model never wrote a held-out evidence
    def evidence(q):
        text = (CORPUS / q["gold_ids"][0]).read_text()
        return next(s for s in sentences(text) if normalize_for_match(q["answers"][0]) in normalize_for_match(s))

    assert not {evidence(q) for q in held} & {evidence(q) for q in train}
    docs = {p.name: normalize_for_match(p.read_text()) for p in CORPUS.iterdir()}
    for q in held + train:
        assert q["question"].endswith("?") and not q["question"].startswith("Fill in the blank")
        assert all(g in docs for g in q["gold_ids"]), q
        assert normalize_for_match(q["answers"][0]) in docs[q["gold_ids"][0]], q  # the answer is in its document
    assert len({q["id"] for q in held + train}) == len(held) + len(train)


def test_quickstart_config_trains_on_one_file_and_evaluates_on_the_other():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["build"]["questions_file"].endswith(TRAIN_QUESTIONS.name)
    assert cfg["eval"]["data"].endswith(QUESTIONS.name)
    assert cfg["train"]["model"]["name_or_path"] == "smollm2-135m-instruct"
    assert sorted(cfg["eval"]["sweep"]["top_k"]) == [1, 3, 5]


def test_conclusion_says_what_the_table_shows():
    def run(label, em, f1, tag, quotes=None, sweep="main", value=None):
        return {"label": label, "system": label.split(" ")[0], "sweep": sweep, "value": value, "em": em, "f1": f1,
                "answer_tag_rate": tag, "quote_validity": quotes, "n": 40}

    report = {"n_items": 40, "runs": [
        run("base", 0.0, 0.05, 0.0), run("base+RAG", 0.025, 0.21, 0.0), run("RAFT+RAG", 0.6, 0.72, 1.0, 0.9),
        run("RAFT+RAG top_k=5", 0.55, 0.7, 1.0, sweep="top_k", value=5),
        run("RAFT+RAG top_k=1", 0.5, 0.6, 0.95, sweep="top_k", value=1),
        run("RAFT+RAG unguarded", 0.58, 0.7, 1.0, 0.7)]}
    text = " ".join(conclusion(report))
    assert "On 40 held-out questions" in text
    assert "closed book, the base model answered 0% exactly (F1 0.05)" in text
    assert "answered 2% exactly (F1 0.21)" in text and "tag in 0% of its replies" in text
    assert "answered 60% exactly (F1 0.72)" in text and "verbatim in 90% of its quotes" in text
    assert "top-1 EM 0.50, top-5 EM 0.55" in text
    assert "without it the RAFT model alone quoted verbatim in 70% of its quotes and answered 58% exactly" in text
    assert conclusion({"runs": []}) == []  # no eval (--no-eval): nothing to conclude


def test_the_run_config_names_this_runs_paths_and_ports_and_every_section_validates(tmp_path, monkeypatch):
    """Every printed step reads OUT/quickstart.yaml; it must load for each verb, with OUT's paths and the ports."""
    from rich.console import Console

    from raft.config import load_config
    from raft.data.config import BuildConfig
    from raft.eval.config import EvalConfig
    from raft.quickstart.pipeline import Pipeline
    from raft.train.config import TrainConfig
    from serving.config import ServeConfig

    monkeypatch.chdir(tmp_path)
    pipe = Pipeline(tmp_path / "out", CONFIG, Console(quiet=True), gateway_port=18000)
    pipe.out.mkdir()
    path = pipe.write_config()
    assert pipe.shown(path) == "out/quickstart.yaml"  # commands show paths relative to where the user is
    build, train = load_config(BuildConfig, path, section="build"), load_config(TrainConfig, path, section="train")
    serve, ev = load_config(ServeConfig, path, section="serve"), load_config(EvalConfig, path, section="eval")
    out = tmp_path / "out"
    assert build.questions_file == str(TRAIN_QUESTIONS) and ev.data == str(QUESTIONS)
    assert (train.data.path, train.output_dir) == (str(out / "dataset"), str(out / "adapter"))
    assert serve.engine.model == str(out / "merged") and serve.port == 18000
    assert serve.retrieval.index_dir == ev.index == str(out / "dataset" / "index")
    urls = {s.name: s.base_url for s in ev.systems}
    assert urls["RAFT+RAG"] == "http://127.0.0.1:18000/v1"
    assert urls["base"] == urls["base+RAG"] == f"http://127.0.0.1:{pipe.base_port}/v1" != urls["RAFT+RAG"]
