"""Pixels cross as uint8; the model's normalisation runs where the forward runs.

An image processor resizes (and crops, and patches) an image, then rescales it by 1/255 and
normalises it by the model's mean and std. Everything up to the resize keeps the values
whole numbers in 0..255, so a preprocessed image fits in uint8: a quarter of float32's bytes
through Ray's object store (offline) and the preprocess cache (online). `install_raw_pixels`
makes a processor stop before the rescale and hand out uint8; `PixelNormalizer.restore` does
the rescale and normalisation on the model's device just before the forward, with the same
arithmetic the Hugging Face (PIL/NumPy) processors use, so the floats the model sees are the
ones the processor would have made. Online and offline both take this path, so they always
agree with each other.

A processor this cannot split (its raw output is not whole numbers, or the normalised result
does not match the processor's own on a probe image) keeps handing out float32 pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

PIXELS = "pixel_values"
RAW_KWARGS = {"do_rescale": False, "do_normalize": False}
# Where a processor's pixel tensor keeps its colour channels:
#  - "channels_first": [..., C, H, W] (CLIP, SigLIP, BLIP, LLaVA);
#  - "patch_channels_first": [patches, C * T * p * p], C outermost in a patch (Qwen2-VL);
#  - "patch_channels_last": [images, patches, p * p * C], with padded patches that must stay 0
#    (SigLIP2, whose `pixel_attention_mask` marks the real ones).
LAYOUTS = ("channels_first", "patch_channels_first", "patch_channels_last")
_PATCH_MASK = "pixel_attention_mask"
# A fused rescale-and-normalise (torchvision's fast processors) rounds differently in the last
# bits; anything beyond this is a processor that does something else after the resize.
_PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PixelNormalizer:
    """The rescale and normalisation a processor would have applied to uint8 pixels."""

    layout: str
    rescale_factor: float | None  # None: the processor does not rescale
    mean: tuple[float, ...] | None  # None: the processor does not normalise
    std: tuple[float, ...] | None

    def restore(self, tensors: dict[str, Any], dtype=None) -> dict[str, Any]:
        """`tensors` with uint8 pixel values turned into the processor's floats (in `dtype`
        when given), on whatever device they are; other tensors as they are."""
        pixels = tensors.get(PIXELS)
        if pixels is None or pixels.is_floating_point():
            return tensors
        restored = dict(tensors)
        restored[PIXELS] = self.normalised(pixels, tensors.get(_PATCH_MASK))
        if dtype is not None:
            restored[PIXELS] = restored[PIXELS].to(dtype)
        return restored

    def normalised(self, pixels, patch_mask=None):
        """float32 pixels: the NumPy processors' `astype(float64) * scale` then float32, and
        `(x - mean) / std` in float32. On a CPU in NumPy (measured 3-4x faster than torch's
        kernels for this on one thread), on a GPU in torch; both bit-exact."""
        import torch

        if pixels.device.type == "cpu":
            out = torch.from_numpy(self._numpy(pixels.numpy()))
        else:
            out = self._torch(pixels)
        if self.layout == "patch_channels_last" and patch_mask is not None:
            # Padded patches are zeros in the processor's output.
            keep = patch_mask.to(out.device).bool().unsqueeze(-1)
            out = out.masked_fill(~keep, 0.0)
        return out

    def _shapes(self, shape: tuple) -> tuple[tuple, tuple]:
        """`shape` with its channels split out, and the shape mean and std take against it."""
        channels = len(self.mean or ())
        if self.layout == "channels_first":
            return tuple(shape), (channels, 1, 1)
        if self.layout == "patch_channels_first":
            return (*shape[:-1], channels, -1), (channels, 1)
        return (*shape[:-1], -1, channels), (channels,)

    def _numpy(self, pixels):
        import numpy as np

        values = pixels.astype(np.float64)
        if self.rescale_factor is not None:
            values = values * self.rescale_factor
        values = values.astype(np.float32)
        if self.mean is None or self.std is None:
            return values
        split, stats = self._shapes(values.shape)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(stats)
        std = np.asarray(self.std, dtype=np.float32).reshape(stats)
        return ((values.reshape(split) - mean) / std).reshape(values.shape)

    def _torch(self, pixels):
        import torch

        values = pixels.to(torch.float64)
        if self.rescale_factor is not None:
            values = values * self.rescale_factor
        values = values.to(torch.float32)
        if self.mean is None or self.std is None:
            return values
        split, stats = self._shapes(tuple(values.shape))
        mean = torch.tensor(self.mean, dtype=torch.float32, device=values.device).view(stats)
        std = torch.tensor(self.std, dtype=torch.float32, device=values.device).view(stats)
        return ((values.view(split) - mean) / std).view(values.shape)


class RawPixelImageProcessor:
    """Wraps an image processor so that it stops before the rescale and returns uint8 pixels.

    Every other setting and output (sizes, grids, patch masks) is the processor's own."""

    def __init__(self, inner, normalizer: PixelNormalizer):
        self.inner = inner
        self.normalizer = normalizer

    def __getattr__(self, name: str):
        # Processors read the image processor's settings (merge_size, patch_size, ...).
        return getattr(self.__dict__["inner"], name)

    def __call__(self, images=None, *args, **kwargs):
        output = self.inner(images, *args, **{**kwargs, **RAW_KWARGS})
        pixels = output.get(PIXELS) if hasattr(output, "get") else None
        if pixels is not None and hasattr(pixels, "to") and pixels.is_floating_point():
            import torch

            output[PIXELS] = pixels.round().clamp(0, 255).to(torch.uint8)
        return output


def install_raw_pixels(processor, layout: str) -> PixelNormalizer | None:
    """Make `processor`'s image processor hand out uint8 pixels, in place, when its
    normalisation can be split off (checked on a probe image); the normaliser, else None."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown pixel layout {layout!r}; known: {', '.join(LAYOUTS)}")
    inner = getattr(processor, "image_processor", None)
    if inner is None or isinstance(inner, RawPixelImageProcessor):
        return getattr(inner, "normalizer", None)
    normalizer = _normalizer_of(inner, layout)
    if normalizer is None:
        return None
    problem = _probe(inner, normalizer)
    if problem:
        logger.info("%s: pixels stay float32 (%s)", type(inner).__name__, problem)
        return None
    processor.image_processor = RawPixelImageProcessor(inner, normalizer)
    return normalizer


def _normalizer_of(image_processor, layout: str) -> PixelNormalizer | None:
    rescale = bool(getattr(image_processor, "do_rescale", False))
    normalize = bool(getattr(image_processor, "do_normalize", False))
    if not (rescale or normalize):
        return None  # nothing to move: the processor's pixels are what the model takes
    factor = getattr(image_processor, "rescale_factor", None) if rescale else None
    mean = getattr(image_processor, "image_mean", None) if normalize else None
    std = getattr(image_processor, "image_std", None) if normalize else None
    if rescale and not isinstance(factor, (int, float)):
        return None
    if normalize:
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
            mean, std = (float(mean),) * 3, (float(std),) * 3
        if mean is None or std is None or len(mean) != len(std):
            return None
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return PixelNormalizer(layout, float(factor) if factor is not None else None, mean, std)


def _probe(image_processor, normalizer: PixelNormalizer) -> str | None:
    """Why this processor's normalisation cannot be split off, or None when it can: a probe
    image through the processor whole, and raw then restored, must give the same tensors."""
    import numpy as np
    import torch
    from PIL import Image

    grid = np.indices((45, 61)).sum(axis=0)
    channels = np.stack([grid * 3, grid * 5 + 7, 255 - grid * 2], axis=-1) % 256
    image = Image.fromarray(channels.astype(np.uint8))
    try:
        whole = image_processor(images=[image], return_tensors="pt")
        raw = image_processor(images=[image], return_tensors="pt", **RAW_KWARGS)
    except Exception as exc:  # noqa: BLE001 - a processor that refuses the switches
        return f"the processor refused do_rescale/do_normalize: {exc}"
    if set(whole) != set(raw) or PIXELS not in raw:
        return "the raw output has other keys"
    for key in whole:
        if key != PIXELS and not torch.equal(torch.as_tensor(whole[key]), torch.as_tensor(raw[key])):
            return f"the raw output's {key} differs"
    pixels = torch.as_tensor(raw[PIXELS])
    if pixels.is_floating_point():
        if not torch.equal(pixels, pixels.round()) or pixels.min() < 0 or pixels.max() > 255:
            return "the raw pixels are not whole numbers in 0..255"
        pixels = pixels.to(torch.uint8)
    restored = normalizer.restore({**dict(raw), PIXELS: pixels})[PIXELS]
    expected = torch.as_tensor(whole[PIXELS])
    if restored.shape != expected.shape or not torch.allclose(
            restored, expected.to(torch.float32), rtol=0, atol=_PROBE_TOLERANCE):
        return "restored pixels do not match the processor's"
    return None
