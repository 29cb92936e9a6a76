"""Vision-encoder reuse for the generate engine: each image is encoded once while its
features stay in the vision cache.

For a batch, every image is looked up by its content key; the misses are encoded in one
batched call (as `generate` would encode them), and `generate` gets the features through
transformers' `mm_encoder_outputs` instead of the pixels. The model still sees its input_ids,
attention mask and (Qwen2-VL) image grids, so positions and masks are computed as usual.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from raysight.caching import ByteLRU, cached_batch

logger = logging.getLogger(__name__)


def accepts_encoder_outputs(model) -> bool:
    """Whether `model.forward` takes precomputed image features (`mm_encoder_outputs`)."""
    forward = getattr(model, "forward", None)
    if forward is None or not hasattr(model, "get_image_features"):
        return False
    return "mm_encoder_outputs" in inspect.signature(forward).parameters


class ImageFeatureCache:
    """Image features by content key, for the items of one generate call at a time."""

    def __init__(self, model, family, cache: ByteLRU, device: str, dtype, pixels=None):
        self.pixels = pixels
        self.model = model
        self.family = family
        self.cache = cache
        self.device = device
        self.dtype = dtype

    def encoder_outputs(self, items: list) -> dict[str, Any] | None:
        """`mm_encoder_outputs` for these ModelInputs, in batch order, or None when an item's
        images cannot be split per image (then generate encodes the pixels itself)."""
        keys: list[str] = []
        images: dict[str, dict[str, Any]] = {}
        for item in items:
            if not self.family.has_images(item.tensors):
                continue
            parts = self.family.split_images(item.tensors)
            if parts is None or len(parts) != len(item.image_keys):
                return None
            for key, part in zip(item.image_keys, parts):
                keys.append(key)
                images.setdefault(key, part)
        if not keys:
            return None

        def encode(missing: list[str]) -> list[Any]:
            inputs = [on_device(images[key], self.device, self.dtype, self.pixels)
                      for key in missing]
            return self.family.encode_images(self.model, inputs)

        return self.family.encoder_outputs(cached_batch(self.cache, keys, encode))


def on_device(tensors: dict[str, Any], device: str, dtype, pixels=None) -> dict[str, Any]:
    """Tensors moved to the model's device; floating ones also cast to its dtype. uint8
    pixels move as uint8 and `pixels` (a PixelNormalizer) normalises them there."""
    moved = {
        key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in tensors.items()
    }
    return pixels.restore(moved, dtype) if pixels is not None else moved
