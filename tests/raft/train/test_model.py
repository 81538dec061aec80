"""LoRA attachment options on the tiny model (no Ray): target detection, DoRA, gradient checkpointing."""

from __future__ import annotations

import pytest

from raft.train.config import LoraConfig, ModelConfig


@pytest.mark.parametrize("use_dora,ckpt", [(False, False), (True, True)])
def test_attach_lora_trains_only_adapter_weights(tiny_model_dir, use_dora, ckpt):
    import torch

    from raft.train.model import attach_lora, linear_module_names, load_base, meta_model

    mcfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="fp32", gradient_checkpointing=ckpt)
    lcfg = LoraConfig(r=4, alpha=8, use_dora=use_dora)
    names = linear_module_names(meta_model(mcfg))
    assert "lm_head" not in names and {"q_proj", "v_proj", "down_proj"} <= set(names)
    model = attach_lora(load_base(mcfg, lcfg, use_gpu=False), mcfg, lcfg, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_magnitude_vector" in n for n in trainable) == use_dora
    model.train()
    ids = torch.randint(5, 100, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    assert grads and all(g is not None for g in grads)
