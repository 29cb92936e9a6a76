"""Step-by-step decoding hooks of a generative family, for the continuous scheduler.

`model.generate` runs a whole batch from prompt to last token; the scheduler
(raysight/scheduler.py) instead prefills each sequence on its own and then runs one decode
step at a time over whichever sequences are running. What differs between architectures
lives here, in the family, never in the scheduler:
- how a prompt is prefilled (which module, which extra inputs: BLIP's text decoder reads the
  image through cross-attention);
- which positions a new token has (Qwen2-VL's M-RoPE adds a per-sequence offset, its
  `rope_delta`, to the text position);
- what per-sequence tensors every decode step needs again (BLIP: the image embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prefill:
    """Sequences after their prompts ran together: next-token logits and their KV cache.

    `logits` [batch, vocab]; `cache` holds the prompts left padded to one width, `mask`
    [batch, width] marks the real columns (1) and padding (0); `lengths` are each row's real
    tokens (its next text position); `offsets` are added to a text position to get the
    model's position (0 but for M-RoPE); `extras` are [batch, ...] tensors every decode
    step takes again."""

    logits: Any
    cache: Any
    mask: Any
    lengths: list[int]
    offsets: list[int]
    extras: dict[str, Any] = field(default_factory=dict)


def text_positions(mask):
    """Each token's position among its row's real tokens, as generate counts them (padding
    gets 1; the mask hides it)."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


class StepwiseDecoding:
    """Defaults that fit decoder-only chat VLMs (LLaVA): the whole model steps, positions are
    the text positions."""

    def prefill(self, model, tensors: dict[str, Any], encoded: dict[str, Any]) -> Prefill:
        """Run a left-padded batch of prompts (collated by the family, on the device) into a
        fresh cache; `encoded` holds `mm_encoder_outputs` when the vision cache supplied
        them. The same inputs and positions as generate's first step."""
        from transformers import DynamicCache

        mask = tensors["attention_mask"]
        positions, offsets = self.prefill_positions(model, tensors, text_positions(mask))
        output = model(**tensors, **encoded, **positions, past_key_values=DynamicCache(),
                       use_cache=True, logits_to_keep=1)
        return Prefill(output.logits[:, -1], output.past_key_values, mask,
                       mask.sum(-1).tolist(), offsets)

    def prefill_positions(self, model, tensors: dict[str, Any],
                          text) -> tuple[dict[str, Any], list[int]]:
        """Extra forward arguments that place the prompts (`text`: their text positions),
        and each row's position offset."""
        return {"position_ids": text}, [0] * int(text.shape[0])

    def decode_positions(self, positions, offsets):
        """The position_ids of one decode step: `positions` [batch, 1] are the text positions
        of the new tokens, `offsets` [batch, 1] each sequence's prefill offset."""
        return positions

    def decode(self, model, input_ids, attention_mask, positions, offsets, cache,
               extras: dict[str, Any]):
        """One step for a left-padded batch: logits [batch, vocab] of the next tokens.
        `attention_mask` covers the cache and the new token; `cache` grows by one."""
        output = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=self.decode_positions(positions, offsets),
                       past_key_values=cache, use_cache=True, **extras)
        return output.logits[:, -1]
