"""Every shipped config loads, section by section, against the model of the command that reads it; the
README's two commands are the ones CI runs."""

from pathlib import Path

import pytest
import yaml

from raft.config import SECTIONS, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def section_models():
    from raft.data.config import BuildConfig
    from raft.eval.config import EvalConfig
    from raft.rerank.config import RerankTrainConfig
    from raft.train.config import TrainConfig
    from retrieval.config import IndexConfig
    from serving.config import ServeConfig

    return {"index": IndexConfig, "build": BuildConfig, "train": TrainConfig, "serve": ServeConfig,
            "eval": EvalConfig, "rerank": RerankTrainConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_section_validates(path):
    data = yaml.safe_load(path.read_text()) or {}
    sections = [k for k in data if k in SECTIONS]
    assert sections, f"{path.name} has no known section ({', '.join(SECTIONS)})"
    assert set(data) <= set(SECTIONS), f"{path.name}: unknown top-level keys {set(data) - set(SECTIONS)}"
    models = section_models()
    for name in sections:
        load_config(models[name], path, section=name)


def test_quickstart_config_names_every_stage():
    data = yaml.safe_load((REPO / "configs" / "quickstart_cpu.yaml").read_text())
    assert {"build", "train", "serve", "eval"} <= set(data)
    assert data["build"]["teacher"]["kind"] == "extractive"  # offline: no model download, no endpoint


def _readme_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("## The two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    main_job, tests = _readme_commands()
    assert main_job.endswith("raft quickstart") and "torch==2.13.0" in main_job
    assert "pytest" in tests and "torch==2.13.0" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci, "the README's test command must be the one .ci/run runs"
