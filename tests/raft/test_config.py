from typing import Annotated

import pytest
from pydantic import Field

from raft.config import Config, ConfigError, load_config, parse_override


class Inner(Config):
    rank: int = 8
    """LoRA rank."""


class Sample(Config):
    lr: float = 1e-4
    """Learning rate."""
    mode: str = Field("dense", pattern="^(dense|bm25|hybrid)$")
    """Search mode."""
    lora: Inner = Inner()
    """LoRA settings."""
    items: list[Inner] = []
    """Several of them."""


def test_overrides_are_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("y=hello world") == (["y"], "hello world")


def test_sectioned_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.5\n  lora:\n    rank: 4\nindex: {}\n")
    cfg = load_config(Sample, f, ["train.lora.rank=16", "mode=bm25"], section="train")
    assert (cfg.lr, cfg.lora.rank, cfg.mode) == (0.5, 16, "bm25")


def test_all_errors_reported_at_once_with_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: fast\nmode: sparse\nlora:\n  rnak: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Sample, f, ["bogus=1"])
    text = str(e.value)
    assert len(e.value.problems) == 4, text
    assert "lr:" in text and "'fast'" in text
    assert "mode:" in text and "'sparse'" in text
    assert "lora.rnak: unknown key; known keys: rank" in text
    assert "bogus: unknown key" in text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Sample, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(Sample, bad)


def test_field_docstrings_are_descriptions():
    assert Sample.model_fields["lr"].description == "Learning rate."


def test_a_file_without_the_verbs_section_is_an_error(tmp_path):
    """A sectioned file for another verb would otherwise run this one on its defaults, in silence."""
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.5\nserve: {}\n")
    with pytest.raises(ConfigError, match=r"eval: no such section in this file \(it has: train, serve\)"):
        load_config(Sample, f, section="eval")


def test_unknown_key_in_a_list_item_lists_the_known_keys():
    with pytest.raises(ConfigError, match=r"items\.1\.rnak: unknown key; known keys: rank"):
        load_config(Sample, None, ["items=[{rank: 1}, {rnak: 2}]"])


def test_lora_target_modules_from_the_command_line():
    from raft.train.config import LoraConfig

    assert LoraConfig(target_modules="q_proj").target_modules == ["q_proj"]
    assert LoraConfig(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]
    assert LoraConfig(target_modules="all-linear").target_modules == "all-linear"


def test_a_rule_across_keys_is_reported_as_its_own_message():
    """A model validator's error has no key: no `(root):` and no pydantic `Value error, ` prefix."""
    from raft.rerank.config import RerankTrainConfig

    with pytest.raises(ConfigError) as e:
        load_config(RerankTrainConfig, None, ["splits=[train,validation]"])
    assert e.value.problems[0].startswith("eval_split 'validation' is also in splits"), e.value.problems


class Switches(Config):
    layers: int | None = None
    """A count."""
    depth: Annotated[int, Field(ge=1)] = 2
    """Another count."""
    on: bool = False
    """A switch."""
    either: int | bool = 0
    """A count or a switch."""


@pytest.mark.parametrize("raw", ["true", "yes", "on", "false"])
def test_a_boolean_for_a_number_is_an_error_not_a_count(raw):
    # pydantic would read `true` as 1: `rerank train layers=true` must not mean one layer
    with pytest.raises(ConfigError) as e:
        load_config(Sample, None, [f"lr={raw}", f"lora.rank={raw}"])
    assert len(e.value.problems) == 2
    assert "lr: expected float, got a boolean" in e.value.problems[0]
    assert "lora.rank: expected int, got a boolean" in e.value.problems[1]
    with pytest.raises(ConfigError, match="layers: expected int or null, got a boolean"):
        load_config(Switches, None, [f"layers={raw}"])
    with pytest.raises(ConfigError, match="depth: expected int, got a boolean"):
        load_config(Switches, None, [f"depth={raw}"])


def test_numbers_and_booleans_still_go_where_they_belong():
    cfg = load_config(Switches, None, ["layers=2", "depth=3", "on=true", "either=true"])
    assert (cfg.layers, cfg.depth, cfg.on, cfg.either) == (2, 3, True, True)


def test_retrieval_configs_refuse_a_boolean_for_a_number_too():
    # the rerank stage's settings live in `retrieval`, whose configs share raft's base
    from retrieval.rerank import RerankConfig
    from serving.config import ServeConfig

    with pytest.raises(ConfigError) as e:
        load_config(RerankConfig, None, ["model=m", "candidates=true", "weight=yes"])
    assert [p.split(":")[0] for p in e.value.problems] == ["candidates", "weight"]
    with pytest.raises(ConfigError, match="retrieval.rerank.candidates: expected int, got a boolean"):
        load_config(ServeConfig, None, ["engine.kind=openai", "engine.base_url=http://x", "retrieval.backend=none",
                                        "retrieval.rerank.model=m", "retrieval.rerank.candidates=on"])
