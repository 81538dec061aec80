"""Counting prompt tokens for the context-length check, without loading the model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger("raft.serve.tokens")

MESSAGE_OVERHEAD = 4  # role markers and separators a chat template adds per message (an estimate)


class TokenCounter:
    """Counts with the model's tokenizer.json when available, else estimates 4 characters per token."""

    def __init__(self, tokenizer_dir: Optional[str] = None):
        self.tokenizer = None
        if tokenizer_dir and (Path(tokenizer_dir) / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer

                self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
            except Exception as e:  # a tokenizer we cannot read only makes the count an estimate
                log.warning("cannot load tokenizer from %s (%s); estimating tokens from characters",
                            tokenizer_dir, e)

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return (len(text) + 3) // 4

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int:
        from raft.prompt import message_text

        return sum(self.count(message_text(m)) + MESSAGE_OVERHEAD for m in messages) + MESSAGE_OVERHEAD


def context_limit(model_dir: Optional[str]) -> Optional[int]:
    """`max_position_embeddings` from a local model's config.json, if there is one."""
    if not model_dir:
        return None
    cfg = Path(model_dir) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(data.get(key), int):
            return data[key]
    return None
