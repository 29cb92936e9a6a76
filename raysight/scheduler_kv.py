"""The running batch's KV cache: one left-padded cache that sequences join and leave.

The requests admitted in one step are prefilled together, left padded, into a cache of
their own. To join the running batch its keys and values are padded on the left to the
batch's width (or the batch is padded to theirs) and concatenated along the batch
dimension; the attention mask marks the padding. A sequence that leaves is dropped with one index_select, and columns that are
padding in every remaining row (left behind by a long sequence that finished) are trimmed,
so the width is always the longest running sequence. Both copies happen only when the batch
changes; a decode step itself only appends one column (as `generate` does).

Works with transformers' DynamicCache and, for encoder-decoder style models (BLIP's text
decoder), EncoderDecoderCache, whose cross-attention part has the same length in every row
and is never padded.
"""

from __future__ import annotations

from typing import Any

from raysight.errors import UnsupportedModel


def _parts(cache) -> tuple[Any, Any]:
    """(self-attention cache, cross-attention cache or None)."""
    if hasattr(cache, "self_attention_cache"):
        return cache.self_attention_cache, cache.cross_attention_cache
    return cache, None


def _layers(part) -> list:
    from transformers.cache_utils import DynamicLayer

    layers = list(part.layers)
    for layer in layers:
        if type(layer) is not DynamicLayer:  # sliding windows, quantized, static layers
            raise UnsupportedModel(
                f"the continuous scheduler handles full-attention dynamic caches; this model's "
                f"cache has {type(layer).__name__} layers: use `scheduler: static`"
            )
    return layers


def _pad_left(tensor, width: int):
    """[batch, heads, length, dim] padded with zeros to `width` on the length axis."""
    import torch

    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


class BatchKV:
    """The running sequences' caches as one batch, with its attention mask [batch, width]."""

    def __init__(self):
        self.cache = None
        self.mask = None  # long tensor [batch, width]: 1 real, 0 padding

    @property
    def batch(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, cache, mask) -> None:
        """Append a prefilled block as the last rows: `cache` holds its prompts left padded,
        `mask` [rows, width] marks their real columns. The narrower side is padded on the
        left to the wider one's width."""
        import torch

        if self.cache is None:
            self.cache, self.mask = cache, mask.long()
            _layers(_parts(cache)[0])  # refuse unsupported cache layouts at the first join
            return
        width = max(self.width, int(mask.shape[1]))
        (mine, my_cross), (theirs, their_cross) = _parts(self.cache), _parts(cache)
        for layer, other in zip(_layers(mine), _layers(theirs)):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(other.keys, width)])
            layer.values = torch.cat([_pad_left(layer.values, width),
                                      _pad_left(other.values, width)])
        if my_cross is not None:
            for layer, other in zip(_layers(my_cross), _layers(their_cross)):
                layer.keys = torch.cat([layer.keys, other.keys])
                layer.values = torch.cat([layer.values, other.values])
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask.long(), width)])

    def grow(self) -> None:
        """One decode step appended a real column to every row (call after the step)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((self.batch, 1))], dim=1)

    def step_mask(self):
        """The attention mask a decode step takes: the cache's columns plus the new token."""
        import torch

        return torch.cat([self.mask, self.mask.new_ones((self.batch, 1))], dim=1)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order); then trim columns no remaining row uses."""
        import torch

        if not rows:
            self.cache = self.mask = None
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        first_real = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, first_real:]
        self_part, cross_part = _parts(self.cache)
        for layer in _layers(self_part):
            layer.keys = layer.keys.index_select(0, index)[:, :, first_real:]
            layer.values = layer.values.index_select(0, index)[:, :, first_real:]
        if cross_part is not None:
            for layer in _layers(cross_part):
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)

    def nbytes(self) -> int:
        """Bytes the batch cache holds (keys and values, padding included)."""
        if self.cache is None:
            return 0
        total = 0
        for part in _parts(self.cache):
            if part is not None:
                for layer in _layers(part):
                    total += layer.keys.nbytes + layer.values.nbytes
        return total


def _pad_mask(mask, width: int):
    import torch

    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)

