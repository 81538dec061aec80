"""The batched engine's key/value cache on a CPU: prompts read before `generate`, into buffers with room for the
answers.

Two costs dominated a batch on a CPU (SmolLM2-135M, measured by benchmarks/engine_prefill.py):

- Reading a left-padded batch. Every pad token passes through the model, and torch's CPU attention with a padding
  mask runs far slower than the causal kernel a lone prompt gets: one long prompt among eight made the batch several
  times slower to read than its prompts one by one. So prompts of different lengths are read one at a time, and
  their caches are left-padded into one batch cache.
- Decoding. transformers' DynamicLayer concatenates each new column onto the whole cache, a fresh allocation and a
  full copy per layer per step: 88% of a decoding step at 8 prompts of 1,700 tokens. Here each layer's keys and
  values are views into buffers sized for the prompt plus the answer, and a step writes its column in place.

`generate` is then called with the cache: it reads only the prompts' last column and decodes all rows together.
Positions agree: a lone row's tokens sit at 0..n-2, and `generate` numbers the last one from the attention mask.
"""

from __future__ import annotations

from typing import Any, Optional

try:  # per-layer caches (transformers >= 4.56 has them; older ones keep the plain padded path)
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - depends on the installed transformers
    DynamicCache = DynamicLayer = None


class NotPlainCache(Exception):
    """The model's cache is not plain per-layer tensors (sliding windows, quantized caches): it cannot be read ahead
    here, and `generate` must keep its own."""


if DynamicLayer is not None:

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer whose keys and values are views into buffers with `room` columns to spare: an update writes
        in place while there is room and concatenates, as DynamicLayer does, once there is not (or once another
        operation, such as a batch selection, replaced the tensors)."""

        def __init__(self, keys: list, values: list, width: int, room: int):
            """`keys`, `values`: one (rows, heads, length, dim) tensor per group of rows, each length at most `width`;
            they are copied right-aligned (left padding, zeros: finite under the attention mask) into the buffers."""
            super().__init__()
            rows = sum(k.shape[0] for k in keys)
            self._k = keys[0].new_zeros(rows, keys[0].shape[1], width + room, keys[0].shape[-1])
            self._v = values[0].new_zeros(rows, values[0].shape[1], width + room, values[0].shape[-1])
            at = 0
            for k, v in zip(keys, values):
                self._k[at:at + k.shape[0], :, width - k.shape[-2]:width] = k
                self._v[at:at + v.shape[0], :, width - v.shape[-2]:width] = v
                at += k.shape[0]
            self.keys, self.values = self._k[:, :, :width], self._v[:, :, :width]
            self.device, self.is_initialized = keys[0].device, True

        def update(self, key_states, value_states, *args, **kwargs):
            n, m = self.keys.shape[-2], key_states.shape[-2]
            own = self.keys.data_ptr() == self._k.data_ptr() and self.keys.shape[0] == self._k.shape[0]
            if not own or n + m > self._k.shape[-2]:
                return super().update(key_states, value_states, *args, **kwargs)
            self._k[:, :, n:n + m] = key_states
            self._v[:, :, n:n + m] = value_states
            self.keys, self.values = self._k[:, :, :n + m], self._v[:, :, :n + m]
            return self.keys, self.values


def _cache_of(out) -> tuple[str, Any]:
    # transformers 5 names the cache `cache` (`past_key_values` is deprecated there); 4.x has only the old name
    key = "cache" if "cache" in out else "past_key_values"
    return key, out[key]


def prefill(model, enc, room: int) -> Optional[dict[str, Any]]:
    """Read every prompt of the left-padded batch `enc` but its last token, each alone unless all have one length,
    into a cache with `room` columns to spare. Returns the cache under the keyword `generate` takes it by, or None
    where there is nothing to read ahead (a prompt of one token) or no per-layer cache (a transformers before
    4.56). Raises NotPlainCache for a model whose cache this cannot hold."""
    if DynamicLayer is None:
        return None
    ids, lens = enc["input_ids"], enc["attention_mask"].sum(dim=1).tolist()
    width = ids.shape[1] - 1  # the cached part: every column but the last
    if min(lens) < 2:
        return None
    if min(lens) == max(lens):  # no padding: one causal pass over the batch
        passes = [ids[:, :width]]
    else:
        passes = [row[width + 1 - n: width].unsqueeze(0) for row, n in zip(ids, lens)]
    caches = []
    for part in passes:
        key, cache = _cache_of(model(input_ids=part, use_cache=True, logits_to_keep=1))
        if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise NotPlainCache(f"{type(cache).__name__} with layers {sorted({type(x).__name__ for x in cache.layers})}")
        caches.append(cache)
    merged = caches[0]
    merged.layers = [PreallocatedLayer([c.layers[i].keys for c in caches], [c.layers[i].values for c in caches],
                                       width, room) for i in range(len(merged.layers))]
    return {key: merged}
