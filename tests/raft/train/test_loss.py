"""The trained-positions loss and the packed-row attention kernel against the ground truth: every example
run alone through transformers' own causal-LM loss. One table of architectures (softcapped logits and
attention, sliding windows, tied embeddings) x the batch kinds `raft train` builds; loss and LoRA gradients
must match, and the output head must see only the labelled positions."""

from __future__ import annotations

import pytest
import torch

from raft.train.batching import collate
from raft.train.loss import TrainedPositionsLoss


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def _gemma2():  # softcapped logits and attention scores; every other layer has a sliding window of 8
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(vocab_size=300, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=16, final_logit_softcapping=5.0, attn_logit_softcapping=20.0,
                                          sliding_window=8, attn_implementation="eager"))


def _qwen2_tied():  # tied input/output embeddings
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


ARCHS = {"llama": _llama, "gemma2-softcap-window": _gemma2, "qwen2-tied": _qwen2_tied}
# group: padded rows; pack-mask: packed rows + dense block-diagonal mask (sdpa/eager; it cannot express a
# sliding window, so not for gemma2); pack-kernel: packed rows, no mask, raft.train.attention's kernel
CASES = [(a, k) for a in sorted(ARCHS) for k in ("group", "pack-mask", "pack-kernel")
         if not (a.startswith("gemma2") and k == "pack-mask")]


def _examples(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n_prompt, n_answer in [(30, 5), (12, 9), (41, 3), (7, 12)]:
        ids = torch.randint(3, 300, (n_prompt + n_answer,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    return out


def _lora(build):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = build()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    for n, p in model.named_parameters():  # non-zero B so the gradient of A is not trivially zero
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _reference(model, ex, n_items):
    """Loss and gradients with every example run alone (no padding, no packing): the ground truth."""
    total = 0.0
    for e in ex:
        out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]), use_cache=False,
                    num_items_in_batch=n_items)
        out.loss.backward()
        total += float(out.loss)
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return total, grads


@pytest.mark.parametrize("arch,kind", CASES)
def test_loss_and_grads_match_examples_run_alone(arch, kind):
    from raft.train.attention import register

    model = _lora(ARCHS[arch])
    ex = _examples()
    n_items = sum(sum(t != -100 for t in e["labels"][1:]) for e in ex)
    ref, ref_grads = _reference(model, ex, n_items)

    mode = "group" if kind == "group" else "pack"
    batch = collate(ex, list(range(len(ex))), mode, pad_id=0, row_len=64, mask_segments=kind == "pack-mask")
    if kind == "pack-kernel":
        model.set_attn_implementation(register())
    seen = []
    head = model.get_base_model().get_output_embeddings()
    spy = head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    lossfn = TrainedPositionsLoss(model)
    loss = lossfn.loss(model, batch, n_items)
    loss.backward()
    spy.remove()

    assert seen == [(n_items, 300)], "the head must see only the labelled positions"
    assert float(loss) == pytest.approx(ref, abs=1e-5, rel=1e-5)
    got = _grads(model)
    assert set(got) == set(ref_grads)
    for n in got:
        assert torch.allclose(got[n], ref_grads[n], atol=1e-6, rtol=1e-4), n

    # the hook is inert outside loss(): plain calls (the checkpoint probe, serving) get full logits
    full = model(input_ids=batch["input_ids"][:1, :10]).logits
    assert full.shape == (1, 10, 300)
    lossfn.remove()


def test_full_logits_option_gives_the_same_loss():
    model = _lora(_llama)
    ex = _examples(1)
    batch = collate(ex, list(range(len(ex))), "group", pad_id=0)
    n = int((batch["labels"][:, 1:] != -100).sum())
    a = TrainedPositionsLoss(model, trained_only=True).loss(model, batch, n)
    b = TrainedPositionsLoss(model, trained_only=False).loss(model, batch, n)
    assert torch.allclose(a, b, atol=1e-6)

