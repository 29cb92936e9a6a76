"""Qwen2-VL / Qwen2.5-VL quirks.

The stock `Qwen2VLProcessor` requires a video processor, and the video processor requires
torchvision. Where torchvision is missing (this project's CPU machines) an image-only
subclass loads the same folder; where torchvision is present users get the stock processor.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from transformers import Qwen2VLProcessor

from raysight.families.base import GenerativeFamily

logger = logging.getLogger(__name__)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (and so without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    def save_pretrained(self, save_directory, **kwargs):
        """Save under the stock class name, so the folder loads like any Qwen2-VL folder."""
        result = super().save_pretrained(save_directory, **kwargs)
        _rename_processor_class(save_directory, type(self).__name__, "Qwen2VLProcessor")
        return result


def _rename_processor_class(folder, old: str, new: str) -> None:
    import json
    from pathlib import Path

    for path in Path(folder).glob("*.json"):
        text = path.read_text(encoding="utf-8")
        if f'"{old}"' not in text:
            continue
        data = json.loads(text)
        if data.get("processor_class") == old:
            data["processor_class"] = new
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class Qwen2VLFamily(GenerativeFamily):
    """Qwen2-VL and Qwen2.5-VL: chat template, M-RoPE positions from the attention mask."""

    name = "qwen2-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    # Each image's patches and its grid go to the vision tower; encoder_only_keys stays
    # pixel_values alone: generate still needs image_grid_thw (with mm_token_type_ids) to
    # place the image tokens' M-RoPE positions.
    image_inputs = ("pixel_values", "image_grid_thw")
    # Flattened patches of (C, temporal, p, p): a patch holds each channel in one run.
    pixel_layout = "patch_channels_first"

    def load_processor(self, source: str, **kwargs):
        from transformers import AutoProcessor

        if importlib.util.find_spec("torchvision") is not None:
            try:
                return AutoProcessor.from_pretrained(source, **kwargs)
            # ImportError/RuntimeError: torchvision present but broken. OSError: a folder
            # saved with no video processor (the image-only one writes none), which
            # transformers' AutoProcessor insists on whenever torchvision is importable.
            except (ImportError, RuntimeError, OSError) as exc:
                logger.warning("stock Qwen2-VL processor failed (%s); using image-only", exc)
        return Qwen2VLImageOnlyProcessor.from_pretrained(source, **kwargs)

    def split_images(self, tensors: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Each image's rows of flattened patches (grid t*h*w of them) and its grid."""
        pixels, grids = tensors.get("pixel_values"), tensors.get("image_grid_thw")
        if pixels is None or grids is None or "pixel_values_videos" in tensors:
            return None
        rows = grids.prod(-1).tolist()
        return [
            {"pixel_values": patches, "image_grid_thw": grid[None]}
            for patches, grid in zip(pixels.split(rows), grids)
        ]

    # -- step-by-step decoding (raysight/scheduler.py) --------------------------------------
    def prefill_positions(self, model, tensors: dict[str, Any],
                          text) -> tuple[dict[str, Any], list[int]]:
        """M-RoPE: image tokens get (t, h, w) positions from their grid, so every later
        position is the text position plus the row's `rope_delta`. Passed explicitly (text
        row first, as generate does) so the model's own stored rope_deltas, which belong to
        whole generate calls, are neither read nor written."""
        import torch

        rows = int(text.shape[0])
        if "image_grid_thw" not in tensors or "mm_token_type_ids" not in tensors:
            return {"position_ids": text[None].expand(4, -1, -1)}, [0] * rows
        spatial, delta = model.model.get_rope_index(
            tensors["input_ids"], mm_token_type_ids=tensors["mm_token_type_ids"],
            image_grid_thw=tensors["image_grid_thw"], attention_mask=tensors["attention_mask"])
        return ({"position_ids": torch.cat([text[None], spatial], dim=0)},
                [int(d) for d in delta.reshape(-1).tolist()])

    def decode_positions(self, positions, offsets):
        """[4, batch, 1]: the text position, then t, h and w all at text + rope_delta."""
        import torch

        spatial = (positions + offsets)[None].expand(3, -1, -1)
        return torch.cat([positions[None], spatial], dim=0)
