"""What a model family must tell the engines, with defaults that fit most chat VLMs.

A family holds one architecture's quirks so engines carry no if/elif on model types:
- its image inputs: which processor outputs are per-image inputs of the vision tower;
- its stop tokens (and pad token), read from the loaded model and tokenizer;
- how a chat (or an image, or a text) becomes model inputs, and how items share a batch.

Every hook takes one item or the loaded model, never a whole engine, so a scheduler that
admits items one at a time can ask the same questions. New families subclass these and
register in `raysight.families`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from raysight.errors import InvalidRequest, TooManyImages, UnsupportedModel
from raysight.families.stepping import StepwiseDecoding

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


def _token_ids(value) -> list[int]:
    """A config's token id field (None, one id or a list) as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class GenerativeFamily(StepwiseDecoding):
    """A generative VLM loaded with AutoModelForImageTextToText and driven by a chat template.
    Its step-by-step decoding hooks (for the continuous scheduler) are in stepping.py."""

    name = "chat-vlm"
    task = "generate"
    model_types: tuple[str, ...] = ()
    # Processor outputs that are per-image inputs of the vision tower. The default layout is
    # one row per image in each; families with another layout override `split_images`.
    image_inputs: tuple[str, ...] = ("pixel_values",)
    # Of those, the ones only the vision tower reads: generate gets the encoder's output
    # instead of them when the vision cache supplies it (see raysight.engines.vision).
    encoder_only_keys: tuple[str, ...] = ("pixel_values",)
    # Where pixel_values keep their colour channels (raysight.pixels.LAYOUTS): what lets the
    # engines ship pixels as uint8 and normalise them next to the forward.
    pixel_layout: str = "channels_first"
    # The most images the architecture takes in one chat (None: as many as the spec allows);
    # the engine counts a request's images against it before it decodes any.
    max_images: int | None = None

    def check_image_count(self, count: int) -> None:
        """Refuse a chat with more images than the architecture takes (counted, not decoded)."""
        if self.max_images is not None and count > self.max_images:
            raise TooManyImages(f"this request has {count} images; {self.name} models take at "
                                f"most {self.max_images} per request")

    def load_processor(self, source: str, **kwargs):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def load_model(self, source: str, **kwargs):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)

    # -- tokens ---------------------------------------------------------------------------
    def stop_token_ids(self, model, tokenizer) -> frozenset[int]:
        """The ids that end an answer: the generation config's end-of-sequence ids, else the
        tokenizer's (none: every answer runs to its max_new_tokens). Read once at load; an
        item stops at the first of them it generates."""
        ids = _token_ids(model.generation_config.eos_token_id)
        return frozenset(ids or _token_ids(tokenizer.eos_token_id))

    def pad_token_id(self, model, tokenizer, stop_ids: frozenset[int]) -> int:
        """The id left padding uses: the generation config's, the tokenizer's, else a stop id
        (the attention mask hides padding, so any id works; 0 when there is none)."""
        for pad in (model.generation_config.pad_token_id, tokenizer.pad_token_id):
            if pad is not None:
                return int(pad)
        return min(stop_ids, default=0)

    # -- inputs ---------------------------------------------------------------------------
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
    def has_images(self, tensors: dict[str, Any]) -> bool:
        """Whether one item's inputs carry any image."""
        return any(key in tensors for key in self.image_inputs)

    def split_images(self, tensors: dict[str, Any]) -> list[dict[str, Any]] | None:
        """One item's encoder inputs, one dict per image in prompt order; None when this
        family cannot hand the model precomputed image features.

        The default fits processors with one row per image in each of `image_inputs` (LLaVA
        and other fixed-size encoders); anything else the processor returns besides the
        prompt's tokens (tiles, image sizes, videos) means the item is not split."""
        if not all(key in tensors for key in self.image_inputs):
            return None
        if set(tensors) - set(_LEFT_PADDED) - set(self.image_inputs):
            return None
        rows = {int(tensors[key].shape[0]) for key in self.image_inputs}
        if len(rows) != 1:
            return None
        return [
            {key: tensors[key][row : row + 1] for key in self.image_inputs}
            for row in range(rows.pop())
        ]

    def encode_images(self, model, images: list[dict[str, Any]]) -> list[Any]:
        """The vision encoder's output for each image, in one batched call: what the model's
        `get_image_features(...).pooler_output` holds per image. `images` come from
        `split_images`, already on the model's device."""
        import torch

        inputs = {key: torch.cat([image[key] for image in images], dim=0)
                  for key in self.image_inputs}
        output = model.get_image_features(**inputs, return_dict=True)
        return list(output.pooler_output)

    def reuses_image_features(self, model_type: str) -> bool:
        """Whether generate may be handed this model's image features (the vision cache).
        Only for the model types this family lists, whose `mm_encoder_outputs` layout is
        known; an architecture run through `family:` encodes its pixels inside generate."""
        return model_type in self.model_types

    def encoder_outputs(self, features: list[Any]) -> dict[str, Any]:
        """generate's `mm_encoder_outputs` for these per-image features, in prompt order:
        LLaVA and Qwen2-VL take them as a tuple, one tensor per image."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}

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
    task = "embed"
    model_types: tuple[str, ...] = ()
    # Image processor outputs the vision tower takes, one row per image in each.
    image_inputs: tuple[str, ...] = ("pixel_values",)
    # Where pixel_values keep their colour channels (raysight.pixels.LAYOUTS).
    pixel_layout: str = "channels_first"
    # CLIP pads texts to the longest in the batch; SigLIP was trained on max_length padding.
    text_padding: str | bool = True

    def load_processor(self, source: str, **kwargs):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, **kwargs)

    def load_model(self, source: str, **kwargs):
        from transformers import AutoModel

        return AutoModel.from_pretrained(source, **kwargs)

    def image_tensors(self, processor, image) -> dict[str, Any]:
        """One image's inputs for the vision tower (batch dimension 1)."""
        output = processor.image_processor(images=[image], return_tensors="pt")
        missing = [key for key in self.image_inputs if key not in output]
        if missing:
            raise UnsupportedModel(
                f"the {self.name} family expects the image processor to return "
                f"{', '.join(self.image_inputs)}; this one returned no {', '.join(missing)}"
            )
        return {key: output[key] for key in self.image_inputs}

    def text_tensors(self, tokenizer, texts: list[str], max_length: int) -> dict[str, Any]:
        """The texts' token ids and attention mask (all ones where the tokenizer gives none,
        as SigLIP's tokenizer does: its text tower was trained without a mask)."""
        encoded = tokenizer(
            texts, padding=self.text_padding, truncation=True, max_length=max_length,
            return_tensors="pt",
        )
        ids = encoded["input_ids"]
        mask = encoded.get("attention_mask")
        return {"input_ids": ids, "attention_mask": mask if mask is not None else ids * 0 + 1}

    def encode_images(self, model, images: list[dict[str, Any]]):
        """Projected image features [images, dim] in one call; `images` come from
        `image_tensors`, already on the model's device."""
        import torch

        inputs = {key: torch.cat([image[key] for image in images], dim=0)
                  for key in self.image_inputs}
        return _projected(model.get_image_features(**inputs))

    def encode_texts(self, model, input_ids, attention_mask):
        """Projected text features [texts, dim] in one call."""
        return _projected(model.get_text_features(input_ids=input_ids,
                                                  attention_mask=attention_mask))

    def label_probabilities(self, model, similarities):
        """Turn cosine similarities [images, labels] into probabilities."""
        scale = model.logit_scale.exp()
        return (similarities * scale).softmax(dim=-1)


def _projected(output):
    """transformers 5 returns an output object; the projected vector is its pooler_output."""
    return getattr(output, "pooler_output", output)
