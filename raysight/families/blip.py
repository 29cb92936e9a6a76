"""BLIP captioning / VQA-by-prefix quirks.

BLIP has no chat template: the prompt is the text of the last user turn, used as the
decoder's prefix. Its text decoder has absolute positions, so left padding would shift them:
items only share a generate call with prompts of the same length.
"""

from __future__ import annotations

from typing import Any, Hashable

from raysight.errors import InvalidRequest
from raysight.families.base import GenerativeFamily, ModelInputs
from raysight.families.stepping import Prefill


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

    # -- step-by-step decoding (raysight/scheduler.py) --------------------------------------
    def prefill(self, model, tensors: dict[str, Any], encoded: dict[str, Any]) -> Prefill:
        """What BLIP's generate does before its first token: encode the images, swap [CLS]
        for BOS, drop the trailing [SEP], then run the text decoder over that prefix with
        cross-attention to the image. Rows share a prompt length (batch_key), so there is no
        padding. The image embeddings ride along as extras: each decode step hands them to
        cross-attention again (its keys and values come from the cache)."""
        import torch
        from transformers import DynamicCache, EncoderDecoderCache

        text = model.config.text_config
        embeds = model.vision_model(pixel_values=tensors["pixel_values"])[0]
        rows = int(embeds.shape[0])
        ids = tensors.get("input_ids")
        if ids is None:
            ids = torch.tensor([[model.decoder_input_ids, text.eos_token_id]] * rows,
                               device=embeds.device)
        ids = ids.clone()
        ids[:, 0] = text.bos_token_id
        ids = ids[:, :-1]
        mask = tensors.get("attention_mask")
        mask = mask[:, :-1] if mask is not None else torch.ones_like(ids)
        image_mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = model.text_decoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds,
            encoder_attention_mask=image_mask, past_key_values=cache, use_cache=True,
            is_decoder=True)
        extras = {"encoder_hidden_states": embeds, "encoder_attention_mask": image_mask}
        return Prefill(output.logits[:, -1], output.past_key_values, mask,
                       mask.sum(-1).tolist(), [0] * rows, extras=extras)

    def decode(self, model, input_ids, attention_mask, positions, offsets, cache, extras):
        """BLIP's decoder has absolute position embeddings: positions given explicitly keep
        a left-padded sequence where it would be alone."""
        output = model.text_decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
            past_key_values=cache, use_cache=True, is_decoder=True, **extras)
        return output.logits[:, -1]


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content.strip()
        return " ".join(p["text"] for p in content if p["type"] == "text").strip()
    return ""
