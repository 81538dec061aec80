"""Model FLOPs of a LoRA training step, and model FLOPs utilisation (MFU).

Counts the work the step needs, PaLM-style (activation recomputation from gradient checkpointing is not
counted, padding is not counted), for each example of `length` tokens of which `trained` carry a label:
- every linear layer: 2 FLOPs per multiply-add forward, 2 more for its input gradient, and 2 more for its
  weight gradient only if the weight trains (the LoRA adapters: a frozen base needs no weight gradients,
  which is why LoRA costs about 4N FLOPs per token where full fine-tuning costs 6N);
- the output head on the positions it runs on: `trained` with `optim.trained_logits_only`, else all;
- attention scores and their weighted sum over the causal pairs (query, earlier key) of each attention
  layer (a sliding window caps the keys), forward once and backward twice.
Linear layers (and GPT-2's Conv1D) are read off the model's modules, so any dense architecture counts
right; a mixture of experts would be counted as if every expert ran, and convolutions or state-space
mixers are not counted.
The first layer's projections of the (frozen) embeddings get no input gradient in fact; counting one
anyway overstates a deep model by well under 1%.
MFU divides the achieved rate by the GPU's dense 16-bit peak: on CPU, for fp32, or on a GPU not in
`PEAK_TFLOPS` it is only reported when `train.peak_tflops` gives the peak.
"""

from __future__ import annotations

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, TFLOP/s per GPU. Matched
# against torch.cuda.get_device_name() in this order (the first substring that occurs wins).
PEAK_TFLOPS = [
    ("GB200", 2500.0), ("B200", 2250.0), ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("V100", 125.0), ("T4", 65.0),
]


def peak_tflops(device_name: str, dtype) -> float | None:
    """The table's peak for a CUDA device name at a 16-bit dtype, else None."""
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for key, tf in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tf
    return None


def _attention_pairs(length: int, window: int | None) -> int:
    """(query, key) pairs a causal layer scores for one sequence: L(L+1)/2, or fewer under a window."""
    if window is None or window >= length:
        return length * (length + 1) // 2
    return window * (window + 1) // 2 + (length - window) * window


class FlopCounter:
    """Training FLOPs per example for `model` (a peft model or a plain causal LM) as it trains."""

    def __init__(self, model, trained_logits_only: bool = True):
        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings()
        head_mods = set(head.modules()) if head is not None else set()  # a peft-wrapped head: its parts too
        self.per_token = 0  # FLOPs of every linear layer but the head, per token (forward + backward)
        self.head = 0  # the head's, per position it runs on
        for mod in model.modules():
            shape = None
            if isinstance(mod, torch.nn.Linear):
                shape = (mod.in_features, mod.out_features)
            elif type(mod).__name__ == "Conv1D":  # GPT-2's transposed linear layer
                shape = tuple(mod.weight.shape)
            if shape:
                flops = 2 * shape[0] * shape[1] * (3 if mod.weight.requires_grad else 2)
                if mod in head_mods:
                    self.head += flops
                else:
                    self.per_token += flops
        self.trained_logits_only = trained_logits_only
        conf = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        heads = conf.num_attention_heads
        head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // heads
        window = getattr(conf, "sliding_window", None)
        types = getattr(conf, "layer_types", None) or ["full_attention"] * conf.num_hidden_layers
        # (width of q.k and of the weighted sum, keys each query may see) per attention layer
        self.attention = [(heads * head_dim, window if "sliding" in t else None)
                          for t in types if "attention" in t]

    def batch(self, lengths: list[int], trained: int) -> float:
        """FLOPs to train on examples of these lengths with `trained` labelled positions in all (forward +
        backward); padding is not work the model needs, so it is not counted."""
        tokens = sum(lengths)
        attn = sum(2 * 2 * width * _attention_pairs(n, w) for n in lengths for width, w in self.attention)
        head_positions = trained if self.trained_logits_only else tokens
        return float(self.per_token * tokens + self.head * head_positions + 3 * attn)

    def example(self, length: int, trained: int) -> float:
        """FLOPs to train on one example."""
        return self.batch([length], trained)
