from pathlib import Path

import pytest

from raft.config import ConfigError, load_config
from raft.data.config import BuildConfig

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("build_*.yaml")), ids=lambda p: p.name)
def test_build_configs_load(path):
    cfg = load_config(BuildConfig, path, section="build")
    assert cfg.mix.p_oracle == 0.8 and cfg.teacher.kind == "openai"


def test_defaults_and_errors_at_once():
    cfg = BuildConfig()
    assert cfg.mix.num_distractors == 4 and cfg.mix.p_oracle == 0.8 and cfg.teacher.kind == "extractive"
    with pytest.raises(ConfigError) as e:
        load_config(BuildConfig, None, ["mix.p_oracle=1.5", "teacher.kind=gpt", "nope=1"], section="build")
    text = str(e.value)
    assert "mix.p_oracle" in text and "teacher.kind" in text and "nope: unknown key" in text


def test_every_config_with_a_build_section_loads():
    import yaml

    found = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if "build" in (yaml.safe_load(path.read_text()) or {}):
            load_config(BuildConfig, path, section="build")
            found += 1
    assert found >= 1


@pytest.mark.parametrize("kind", ["openai", "vllm_offline"])
def test_a_model_teacher_needs_its_model_named(kind):
    """No default model name fits a server: a made-up one was sent, and every request failed with a 404."""
    with pytest.raises(ConfigError) as e:
        load_config(BuildConfig, None, [f"teacher.kind={kind}", "mix.p_oracle=1.5"], section="build")
    text = str(e.value)
    assert f"teacher.model: is required with teacher.kind={kind}" in text and "mix.p_oracle" in text
    assert load_config(BuildConfig, None, [f"teacher.kind={kind}", "teacher.model=m"]).teacher.model == "m"
    assert load_config(BuildConfig, None, ["teacher.kind=extractive"]).teacher.model is None
