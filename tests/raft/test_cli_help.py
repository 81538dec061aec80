"""What `--help`, `--help-config` and `--print-config` tell a new user: accurate usage lines, config help
without positional arguments on every verb with a config, override examples that name real keys, text
wrapped to the terminal, and config errors reported together."""

import re
import subprocess
import sys

import pytest

from raft.cli import available, command_parser, main

# every verb that reads a config section (raft index: its `build` sub-verb; raft rerank: `train`)
CONFIG_VERBS = {"build": ["build"], "train": ["train"], "export": ["export"], "serve": ["serve"],
                "eval": ["eval"], "index": ["index", "build"], "rerank": ["rerank", "train"]}


def raft(*args, columns=None):
    env = None
    if columns is not None:
        import os

        env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "raft.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("verb", sorted(CONFIG_VERBS))
def test_help_config_needs_no_positional_arguments(verb):
    """`raft index build --help-config` and `raft build --help-config` are shown bare in the README."""
    r = raft(*CONFIG_VERBS[verb], "--help-config", columns=100)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^\w[\w.]* \(", r.stdout, re.M), r.stdout[:300]  # `key (type, default ...): ...`


def test_every_verb_takes_config_and_help_config():
    for name in available():
        parser, _ = command_parser(name)
        if name in ("index", "rerank"):
            parser = parser._subparsers._group_actions[0].choices[CONFIG_VERBS[name][1]]
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"--config", "--help-config"} <= flags, name


def test_usage_lines_are_accurate():
    usage = raft("index", "build", "--help", columns=200).stdout.split("\n\n")[0]
    assert "--out DIR [DIR ...]" not in usage and "--config FILE [FILE ...]" not in usage
    assert "[key.sub=value ...]" in usage  # optional, as it is
    r = raft("index", "build", columns=200)  # nothing given: the error names what is missing, not overrides
    assert r.returncode == 2 and "CORPUS" in r.stderr and "key.sub=value" not in r.stderr


def _has_key(model, dotted: str) -> bool:
    for part in dotted.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation
    return True


@pytest.mark.parametrize("verb", sorted(CONFIG_VERBS))
def test_override_examples_in_help_name_real_keys(verb):
    """The overrides' help shows `e.g. SECTION.KEY=V or KEY=V` with a key the section has (it once said
    index.seed=7, a key that does not exist)."""
    from test_configs_and_readme import section_models

    from raft.commands.export import ExportConfig

    text = raft(*CONFIG_VERBS[verb], "--help", columns=300).stdout
    m = re.search(r"e\.g\. (\w+)\.(\S+)=\S+ or (\S+)=", text)
    assert m, text
    section, dotted, bare = m.groups()
    assert dotted == bare
    models = {**section_models(), "export": ExportConfig}
    assert _has_key(models[section], bare), f"{verb} --help names {section}.{bare}, which is not a key"


def test_help_config_wraps_to_the_terminal():
    for columns in (60, 100):
        out = raft("build", "--help-config", columns=columns).stdout
        assert max(len(line) for line in out.splitlines()) <= columns
        assert "teacher.kind (openai|vllm_offline|extractive, default 'extractive')" in out.replace("\n    ", " ")


def test_command_description_wraps_to_the_terminal():
    out = raft("quickstart", "--help", columns=60).stdout
    description = out.split("\n\n")[1]
    assert max(len(line) for line in description.splitlines()) <= 60


def test_build_index_keys_are_typed_and_reported_together(tmp_path, capsys):
    assert main(["build", "--out", str(tmp_path / "d"), "index.chunk_size=abc", "index.bogus=1",
                 "index.fusion=zz", "mix.p_oracle=2", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    assert "index.chunk_size" in err and "'abc'" in err and "index.fusion" in err and "mix.p_oracle" in err
    assert "index.bogus: unknown key; known keys:" in err and "chunk_overlap" in err
    assert main(["build", "--out", str(tmp_path / "d"), "index.chunk_size=100", "--print-config"]) == 0
    assert "chunk_size: 100" in capsys.readouterr().out


def test_index_build_takes_overrides_anywhere(tmp_path, capsys):
    """Positionals, options and overrides in any order, through the sub-verb's own parser."""
    assert main(["index", "build", "chunk_size=64", "docs", "--out", str(tmp_path / "i"), "chunk_overlap=4",
                 "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "chunk_size: 64" in out and "chunk_overlap: 4" in out


def test_export_reads_its_config_section(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("export:\n  adapter: runs/a/adapter\n  merge: true\n  out: merged\n  dtype: fp16\n")
    assert main(["export", "--config", str(cfg), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "adapter: runs/a/adapter" in out and "merge: true" in out and "dtype: fp16" in out
    assert main(["export", "x", "--out", "y", "--dtype", "bf16", "dtype=fp32", "--print-config"]) == 0
    assert "dtype: fp32" in capsys.readouterr().out  # an explicit override wins over the flag
    assert main(["export", "x", "--out", "y"]) == 2
    assert "pass --merge" in capsys.readouterr().err


def test_quickstart_config_errors_are_one_report_not_a_traceback(tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text("build:\n  seed: [1\ntrain: {}\n")
    r = raft("quickstart", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "YAML syntax error at line 3" in r.stderr and len(r.stderr.splitlines()) <= 3
    bad.write_text("build:\n  sed: 1\neval:\n  limit: -1\n")
    r = raft("quickstart", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "build.sed: unknown key" in r.stderr and "eval.limit" in r.stderr
    assert not (tmp_path / "o").exists()  # no step ran


def test_quickstart_help_config_lists_every_section():
    out = raft("quickstart", "--help-config", columns=200).stdout
    for key in ("build.mix.num_distractors", "train.optim.lr", "serve.engine.model", "eval.systems"):
        assert f"\n{key} (" in out, key


@pytest.mark.parametrize("flag,override,want", [
    (["--questions", "A.jsonl"], "questions_file=B.jsonl", "questions_file: B.jsonl"),
    (["--questions", "A.jsonl"], "build.questions_file=B.jsonl", "questions_file: B.jsonl"),
    (["--index", "I"], "index_dir=J", "index_dir: J"),
    (["--ray"], "ray=false", "ray: false"),
])
def test_build_explicit_override_wins_over_its_flag(capsys, flag, override, want):
    """docs/configuration.md: flags are applied first, so an override of the same key wins."""
    assert main(["build", "x", "--out", "y", *flag, override, "--print-config"]) == 0
    assert want in capsys.readouterr().out.splitlines()


def test_eval_system_flags_without_model_are_an_error(capsys):
    """--name, --retrieval, --top-k, --api-key describe the one system --model defines: alone they were
    ignored."""
    from raft.eval.config import SystemConfig

    DEFAULT_BASE_URL = SystemConfig.model_fields["base_url"].default  # what the error and --help must name
    assert main(["eval", "--retrieval", "local", "--top-k", "7", "--name", "foo", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--name, --retrieval, --top-k given without --model" in err and "systems=[...]" in err
    assert DEFAULT_BASE_URL in err and "Traceback" not in err
    assert main(["eval", "--base-url", "http://h:1/v1", "--print-config"]) == 2  # no model name is guessed
    assert "--base-url http://h:1/v1 needs --model NAME" in capsys.readouterr().err
    for bad in ("0", "-3"):
        assert main(["eval", "--model", "m", "--top-k", bad, "--print-config"]) == 2
        assert f"--top-k must be at least 1, got {bad}" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--top-k", "7", "--retrieval", "gateway", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "top_k: 7" in out and "retrieval: gateway" in out and f"base_url: {DEFAULT_BASE_URL}" in out


def _help(*verbs: str, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "300")  # one line per option: a default is not split across lines
    parser, _ = command_parser(verbs[0])
    for v in verbs[1:]:
        parser = parser._subparsers._group_actions[0].choices[v]
    return parser.format_help()


def test_help_shows_defaults_and_describes_every_argument(monkeypatch):
    search = _help("index", "search", monkeypatch=monkeypatch)
    assert "(default hybrid)" in search and "(default 64)" in search
    for action in ("add", "delete", "stats", "search"):
        out = _help("index", action, monkeypatch=monkeypatch)
        assert re.search(r"^  DIR +index directory", out, re.M), action
    build = _help("index", "build", monkeypatch=monkeypatch)
    assert build.split("\n\n")[1].startswith("Load, chunk, embed and index a corpus")  # the description line
    ev = _help("eval", monkeypatch=monkeypatch)
    assert "(default: 5)" in ev and "(default: http://127.0.0.1:8000/v1)" in ev
    assert re.search(r"--model NAME .*no default", ev)


def test_help_config_lists_the_keys_of_list_items_and_optional_sections():
    """`--help-config` is the complete list of keys: a system's own keys included."""
    out = raft("eval", "--help-config", columns=200).stdout
    for key in ("systems[].name", "systems[].rerank", "systems[].extra_body", "systems[].price.prompt_per_million"):
        assert f"\n{key} (" in out, key
