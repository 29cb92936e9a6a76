"""BLIP captioning / VQA-by-prefix quirks.

BLIP has no chat template: the prompt is the text of the last user turn, used as the
decoder's prefix. Its text decoder has absolute positions, so left padding would shift them:
items only share a generate call with prompts of the same length.
"""

from __future__ import annotations

from typing import Hashable

from raysight.errors import InvalidRequest
from raysight.families.base import GenerativeFamily, ModelInputs


class BlipFamily(GenerativeFamily):
    name = "blip"
    model_types = ("blip",)
    max_images = 1

    def build_inputs(self, processor, messages: list[dict], images: list) -> ModelInputs:
        if len(images) != 1:
            raise InvalidRequest(
                f"BLIP models take exactly one image per request; this one has {len(images)}"
            )
        prompt = _last_user_text(messages)
        if prompt:
            tensors = dict(processor(images=images, text=prompt, return_tensors="pt"))
            # generate() swaps [CLS] for its BOS token and drops the trailing [SEP].
            prompt_tokens = int(tensors["input_ids"].shape[1]) - 1
        else:
            tensors = dict(processor(images=images, return_tensors="pt"))
            prompt_tokens = 1
        return ModelInputs(tensors=tensors, prompt_tokens=prompt_tokens)

    def stop_token_ids(self, model, tokenizer) -> frozenset[int]:
        """BLIP's decoder ends a caption with [SEP] (its text config's sep_token_id), which
        its generation config may not list as end-of-sequence."""
        ids = super().stop_token_ids(model, tokenizer)
        sep = getattr(getattr(model.config, "text_config", None), "sep_token_id", None)
        return ids | {sep} if sep is not None else ids

    def batch_key(self, inputs: ModelInputs) -> Hashable:
        return inputs.prompt_tokens

    def generate_kwargs(self, pad_token_id):
        return {}  # BLIP's generate sets pad, bos and eos itself

    def generated_start(self, batch) -> int:
        # With no prompt, generate starts from its BOS token alone.
        if "input_ids" not in batch:
            return 1
        return int(batch["input_ids"].shape[1]) - 1


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content.strip()
        return " ".join(p["text"] for p in content if p["type"] == "text").strip()
    return ""
