"""Chat-template VLMs that need nothing beyond the generic family: LLaVA (1.5 style).

Their processor turns a chat into input_ids with one placeholder per image token and one
`pixel_values` row per image; `AutoModelForImageTextToText` loads them. An architecture
that works the same way but is not listed here runs with `family: chat-vlm` in its ModelSpec.
"""

from __future__ import annotations

from raysight.families.base import GenerativeFamily


class ChatVlmFamily(GenerativeFamily):
    name = "chat-vlm"
    model_types = ("llava",)
