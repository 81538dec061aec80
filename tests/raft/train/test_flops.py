"""FlopCounter (raft/train/flops.py) against torch's own FLOP count, and the GPU peak table behind MFU."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from raft.train.flops import FlopCounter, _attention_pairs, peak_tflops
from raft.train.loss import TrainedPositionsLoss


def test_flop_counter_matches_torch_count():
    """FlopCounter's per-example FLOPs equal what torch's FlopCounterMode sees in one LoRA step, for the
    linear layers, the head on the trained positions only, and attention (eager computes the whole square,
    so the causal count is compared after scaling to the square)."""
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager"))
    base.enable_input_require_grads()  # the first layer then needs every input gradient, like the others
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    length, prompt = 96, 80
    ids = torch.randint(3, 300, (1, length))
    labels = ids.clone()
    labels[:, :prompt] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    for trained_only in (True, False):
        model.zero_grad(set_to_none=True)
        lossfn = TrainedPositionsLoss(model, trained_only)
        with FlopCounterMode(display=False) as fc:
            lossfn.loss(model, batch, length - prompt).backward()
        lossfn.remove()
        est = FlopCounter(model, trained_only)
        causal = sum(12 * width * length * (length + 1) // 2 for width, _ in est.attention)
        square = sum(12 * width * length * length for width, _ in est.attention)
        expected = est.example(length, length - prompt) - causal + square
        assert abs(fc.get_total_flops() / expected - 1) < 0.002, (fc.get_total_flops(), expected, trained_only)


def test_attention_pairs_and_peaks():
    assert _attention_pairs(4, None) == 10
    assert _attention_pairs(4, 2) == 3 + 2 * 2  # positions see 1, 2, 2, 2 keys
    assert _attention_pairs(4, 8) == 10
    assert peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.0
    assert peak_tflops("NVIDIA L40S", torch.float16) == 362.0
    assert peak_tflops("NVIDIA L40", torch.bfloat16) == 181.0
    assert peak_tflops("NVIDIA L4", torch.bfloat16) == 121.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", torch.float32) is None
    assert peak_tflops("Some Future GPU", torch.bfloat16) is None
