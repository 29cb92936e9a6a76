"""What a model family must tell the engines, with defaults that fit most chat VLMs.

A family holds one architecture's quirks (how to load its processor, how a chat becomes
model inputs, how items are padded into one batch) so engines carry no if/elif on model
types. New families subclass these and register in `raysight.families`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from raysight.errors import InvalidRequest

# Keys whose tensors are per-token and padded on the left with the pad id (input_ids) or 0.
_LEFT_PADDED = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class ModelInputs:
    """One item's model-ready tensors (batch dimension 1) and its prompt length in tokens.

    `image_keys` name the item's images by content, in prompt order (empty when no cache
    needs them): the vision cache finds an image's encoder output under its key."""

    tensors: dict[str, Any]
    prompt_tokens: int
    image_keys: tuple[str, ...] = ()


class GenerativeFamily:
    """A generative VLM loaded with AutoModelForImageTextToText and driven by a chat template."""

    name = "chat-vlm"
    model_types: tuple[str, ...] = ()

    def load_processor(self, source: str, **kwargs):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def load_model(self, source: str, **kwargs):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)

    def build_inputs(self, processor, messages: list[dict], images: list) -> ModelInputs:
        """Apply the chat template to `messages` (images as {"type": "image"} parts)."""
        if getattr(processor, "chat_template", None) is None:
            raise InvalidRequest(
                "this model's processor has no chat template; give it a plain prompt model "
                "family or add a chat_template to the model folder"
            )
        prompt = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        tensors = processor(
            text=[prompt], images=images or None, return_tensors="pt", padding=False
        )
        tensors = dict(tensors)
        return ModelInputs(tensors=tensors, prompt_tokens=int(tensors["input_ids"].shape[1]))

    def batch_key(self, inputs: ModelInputs) -> Hashable:
        """Items with different keys never share one generate call."""
        return None

    def generated_start(self, batch: dict[str, Any]) -> int:
        """Index in generate's output rows where the new tokens begin."""
        return int(batch["input_ids"].shape[1])

    def generate_kwargs(self, pad_token_id: int) -> dict[str, Any]:
        """Extra keyword arguments for `model.generate`."""
        return {"pad_token_id": pad_token_id}

    # -- vision-encoder reuse: see raysight.engines.vision ----------------------------------
    # Keys only the vision encoder reads; generate gets the encoder's output instead.
    encoder_only_keys: tuple[str, ...] = ("pixel_values",)

    def split_images(self, tensors: dict[str, Any]) -> list[dict[str, Any]] | None:
        """One item's encoder inputs, one dict per image in prompt order; None when this
        family cannot hand the model precomputed image features.

        The default fits processors with one `pixel_values` row per image (LLaVA and other
        fixed-size encoders); anything else (tiles, image sizes, videos) is not split."""
        pixels = tensors.get("pixel_values")
        if pixels is None or set(tensors) - set(_LEFT_PADDED) - {"pixel_values"}:
            return None
        return [{"pixel_values": pixels[row : row + 1]} for row in range(pixels.shape[0])]

    def encode_images(self, model, images: list[dict[str, Any]]) -> list[Any]:
        """The vision encoder's output for each image, in one batched call: what the model's
        `get_image_features(...).pooler_output` holds per image."""
        import torch

        pixels = torch.cat([image["pixel_values"] for image in images], dim=0)
        output = model.get_image_features(pixel_values=pixels, return_dict=True)
        return list(output.pooler_output)

    def collate(self, items: list[ModelInputs], pad_token_id: int) -> dict[str, Any]:
        """Pad per-token tensors on the left; concatenate image tensors along dim 0."""
        import torch

        # Items without a prompt (BLIP captioning) carry no input_ids at all.
        width = max((item.tensors["input_ids"].shape[1] for item in items
                     if "input_ids" in item.tensors), default=0)
        batch: dict[str, Any] = {}
        for key in items[0].tensors:
            values = [item.tensors.get(key) for item in items]
            present = [v for v in values if v is not None]
            if key in _LEFT_PADDED:
                fill = pad_token_id if key == "input_ids" else 0
                rows = []
                for value in values:
                    pad = width - value.shape[1]
                    filler = torch.full((1, pad), fill, dtype=value.dtype)
                    rows.append(torch.cat([filler, value], dim=1))
                batch[key] = torch.cat(rows, dim=0)
            elif present and hasattr(present[0], "shape"):
                batch[key] = torch.cat(present, dim=0)
        # Keys only some items have (e.g. pixel_values when one chat has no image).
        for item in items:
            for key, value in item.tensors.items():
                if key not in batch and hasattr(value, "shape"):
                    batch[key] = torch.cat(
                        [i.tensors[key] for i in items if key in i.tensors], dim=0
                    )
        return batch


class EncoderFamily:
    """A dual encoder (CLIP style): image -> vector, text -> vector, softmax over labels."""

    name = "clip"
    model_types: tuple[str, ...] = ()
    # CLIP pads texts to the longest in the batch; SigLIP was trained on max_length padding.
    text_padding: str | bool = True

    def load_processor(self, source: str, **kwargs):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def load_model(self, source: str, **kwargs):
        from transformers import AutoModel

        return AutoModel.from_pretrained(source, **kwargs)

    def label_probabilities(self, model, similarities):
        """Turn cosine similarities [images, labels] into probabilities."""
        scale = model.logit_scale.exp()
        return (similarities * scale).softmax(dim=-1)
