"""A tiny random Llama with a BPE tokenizer trained on a given corpus, built locally in seconds.

It is a smoke model: it makes the whole pipeline (build, train, export, serve, eval) run on a CPU with
no hub access, and it learns short patterns, but it does not know anything. Real runs name a hub model
or a local checkpoint instead (see configs/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from raft.prompt import ANSWER_TAG, BEGIN_QUOTE, END_QUOTE

# A ChatML-style template: the roles are plain text the BPE tokenizer can learn, and the assistant turn is
# marked with {% generation %} so `return_assistant_tokens_mask` finds the tokens to train on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # The RAFT tags are single tokens (cheap to learn) but NOT special: engines decode replies with
    # skip_special_tokens, which would strip `<ANSWER>:` and the quote marks from every answer.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (BEGIN_QUOTE, END_QUOTE, ANSWER_TAG)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 2000,
                     hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     max_positions: int = 2048, seed: int = 0) -> Path:
    """Write a random tiny LlamaForCausalLM and its tokenizer to `out_dir`; returns the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=64, do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def corpus_texts(path: str | Path) -> list[str]:
    """All text files under `path` (a file or directory), for training the tiny tokenizer."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return [f.read_text(encoding="utf-8", errors="ignore") for f in files]
