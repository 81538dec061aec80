"""Which model names the gateway serves, what each is called on the engine, and whether retrieval is
on by default for it (on for the RAFT model and every adapter, off for the base model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from serving.config import ServeConfig


@dataclass(frozen=True)
class ServedModel:
    name: str
    """What clients send as `model`."""
    engine_model: str
    """What the engine calls it (vLLM: the LoRA module name or the base model; transformers: the path)."""
    retrieval: bool
    """Retrieve by default."""
    parent: Optional[str] = None
    """The base model an adapter belongs to."""


def served_models(cfg: ServeConfig) -> dict[str, ServedModel]:
    e = cfg.engine
    if e.kind == "vllm":
        out: dict[str, ServedModel] = {}
        if cfg.base_model_name:
            out[cfg.base_model_name] = ServedModel(cfg.base_model_name, e.model, False)
        for name in e.adapters:
            out[name] = ServedModel(name, name, True, parent=cfg.base_model_name)
        if cfg.model_name not in out:
            # the RAFT name is an alias of the first adapter, or of the base model when there is none
            target = next(iter(e.adapters), None) or e.model
            out[cfg.model_name] = ServedModel(cfg.model_name, target, True,
                                              parent=cfg.base_model_name if e.adapters else None)
        return out
    # transformers serves one merged model; a plain OpenAI URL serves what it serves
    engine_model = e.model or cfg.model_name
    return {cfg.model_name: ServedModel(cfg.model_name, engine_model, True)}
