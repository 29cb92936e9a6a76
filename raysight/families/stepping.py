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
    """One sequence after its prompt ran: the next-token logits and its own KV cache.

    `length` is the tokens in `cache` (its positions run 0..length-1); `offset` is added to
    a text position to get the model's position (0 but for M-RoPE); `extras` are batch-1
    tensors that every decode step takes again, stacked along the batch dimension."""

    logits: Any
    cache: Any
    length: int
    offset: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class StepwiseDecoding:
    """Defaults that fit decoder-only chat VLMs (LLaVA): the whole model steps, positions are
    the text positions."""

    def prefill(self, model, tensors: dict[str, Any], encoded: dict[str, Any]) -> Prefill:
        """Run one item's prompt (batch 1, no padding) into a fresh cache. `tensors` are on
        the device; `encoded` holds `mm_encoder_outputs` when the vision cache supplied them."""
        from transformers import DynamicCache

        length = int(tensors["input_ids"].shape[1])
        positions, offset = self.prefill_positions(model, tensors)
        output = model(**tensors, **encoded, **positions, past_key_values=DynamicCache(),
                       use_cache=True, logits_to_keep=1)
        return Prefill(output.logits[0, -1], output.past_key_values, length, offset)

    def prefill_positions(self, model, tensors: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Extra forward arguments that place the prompt, and the sequence's position offset.
        A lone unpadded prompt needs none: the model counts 0..length-1 itself."""
        return {}, 0

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
