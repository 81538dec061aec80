"""Typed configs: YAML files plus `key.sub=value` overrides, validated by pydantic, all errors at once.

One YAML file may hold a whole pipeline, one top-level section per command (`index`, `build`, `train`,
`rerank`, `export`, `serve`, `eval`); each command validates only its own section, against its own model. The models live
next to the code they configure (`retrieval/config.py`, `raft/data/config.py`, ...) and subclass
`Config`, so every field carries a docstring that `raft <cmd> --help-config` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from retrieval.config import BaseConfig, type_name

SECTIONS = ("index", "build", "train", "rerank", "export", "serve", "eval")


class Config(BaseConfig):
    """Base for every config section: unknown keys are errors, field docstrings become descriptions, and a
    boolean given for a number is an error (retrieval.config.BaseConfig, shared with the retrieval package)."""


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config ({source}): {len(problems)} problem(s)\n{lines}")


M = TypeVar("M", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3). Values are parsed as YAML, so `x=[1,2]`, `y=null`, `z=true` work."""
    if "=" not in item:
        raise ConfigError("command line", [f"override {item!r} is not of the form key.sub=value"])
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("command line", [f"override {item!r} has an empty key part"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file (and the line, for syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), [f"config file {str(p)!r} does not exist"])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(p), [f"YAML syntax error{where}: {getattr(e, 'problem', e)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), [f"top level must be a mapping of keys, got {type(data).__name__}"])
    return data


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested config model that owns the key at `loc` (used to list the keys it knows), through nested
    sections, optional ones and list items (`systems.0.name`)."""
    for part in loc[:-1]:
        if isinstance(part, int):  # a list item's index: `model` is already the item's model
            continue
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        inner, _ = _inner_model(ann)
        if inner is None:
            return None
        model = inner
    return model


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per error: the dotted key, what is wrong, the value given and what is allowed."""
    problems = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, e["loc"])
            known = f"; known keys: {', '.join(sorted(owner.model_fields))}" if owner else ""
            problems.append(f"{key}: unknown key{known}")
            continue
        if e["type"] == "missing":
            problems.append(f"{key}: required key is missing")
            continue
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own ValueError
        if not e["loc"]:  # a rule across keys (a model validator): its message names the keys itself
            problems.append(msg)
            continue
        line = f"{key}: {msg}"
        if not isinstance(e.get("input"), dict):
            line += f" (got {e.get('input')!r})"
        problems.append(line)
    return problems


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    section: str | None = None,
) -> M:
    """Load `model` from the YAML at `path` (its `section` if the file is sectioned) plus overrides.

    Overrides may name keys relative to the section (`lr=1e-4`) or with it (`train.lr=1e-4`).
    Every problem, from every source, is reported in one ConfigError.
    """
    source = str(path) if path else "defaults"
    data: dict = read_yaml(path) if path else {}
    problems: list[str] = []
    if section is not None and path is not None:
        sectioned = any(k in SECTIONS for k in data)
        if sectioned:
            unknown = [k for k in data if k not in SECTIONS]
            problems += [f"{k}: unknown section; allowed: {', '.join(SECTIONS)}" for k in unknown]
            if section not in data:  # defaults would run in silence: most likely the wrong file
                have = ", ".join(k for k in data if k in SECTIONS)
                problems.append(f"{section}: no such section in this file (it has: {have}); add a section "
                                f"`{section}:`, or give a file written for this verb")
            data = data.get(section) or {}
            if not isinstance(data, dict):
                problems.append(f"{section}: must be a mapping, got {type(data).__name__}")
                data = {}
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except ConfigError as e:
            problems += e.problems
            continue
        if section and keys[0] == section and len(keys) > 1:
            keys = keys[1:]
        _set_path(data, keys, value)
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        problems += format_validation_error(e, model)
        cfg = None
    if problems:
        if overrides:
            source += " + command-line overrides"
        raise ConfigError(source, problems)
    return cfg  # type: ignore[return-value]


def describe(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per field, nested sections flattened: `key (type, default): docstring`."""
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe(ann, key + ".")
            continue
        tname = type_name(ann)
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"{key} ({tname}, default {default}): {field.description or ''}".rstrip(": "))
        inner, suffix = _inner_model(ann)
        if inner is not None:  # eval.systems: each item's keys as `systems[].name`; an optional section's too
            lines += describe(inner, key + suffix)
    return lines


def _inner_model(ann: Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside a `list[Model]` field (key suffix "[].") or an optional `Model | None` one ("."),
    also when the list itself is optional; else (None, "")."""
    import typing

    def is_model(a: Any) -> bool:
        return isinstance(a, type) and issubclass(a, BaseModel)

    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is list:
        return (args[0], "[].") if len(args) == 1 and is_model(args[0]) else (None, "")
    if len(args) == 1 and type(None) in typing.get_args(ann):  # Optional[X]
        return (args[0], ".") if is_model(args[0]) else _inner_model(args[0])
    return None, ""
