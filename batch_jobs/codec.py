"""Prepared items (PreparedChat / PreparedEmbed) as bytes, to cross from the CPU stage to
the model stage in one Arrow column.

A pickle per row, because what a family prepares differs in keys, shapes and dtypes (BLIP:
pixel_values [1, 3, H, W]; Qwen2-VL: flattened patches, image_grid_thw and input_ids of any
length) and carries the engine's sampling fields and batch group. One binary column holds all
of them, and pickling torch tensors keeps values and dtypes exactly, so the model stage
answers what the online engine would. Pixels travel as uint8, resized but not yet normalised
(raysight/pixels.py): a 224 px image is ~151 KB a row instead of ~603 KB as float32. Both
ends are this job's own stages.
"""

from __future__ import annotations

import pickle
from typing import Any

import pyarrow as pa

# large_binary: one block of full-size pixel tensors (a few MB a row) passes 2 GB quickly.
PREPARED_TYPE = pa.large_binary()


def encode_prepared(item: Any) -> bytes:
    """One prepared item as bytes. Streaming callbacks cannot cross processes: none offline."""
    if getattr(item, "on_text", None) is not None:
        raise ValueError("a prepared chat with an on_text callback cannot leave its process")
    return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


def decode_prepared(data: bytes) -> Any:
    """The prepared item `encode_prepared` wrote."""
    return pickle.loads(data)
