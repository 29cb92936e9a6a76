"""The generate engine: chats with images in, text out, in the three steps of DESIGN.md.

Batching never changes an answer: prompts are padded on the left with attention masks, the
family decides which items may share one `generate` call, and each item's tokens are cut
at its own limit and its own end-of-sequence token.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from raysight.caching import (EngineCaches, digest, image_key, install_preprocess_cache,
                              known_image_keys)
from raysight.chat import count_images, prompt_messages, split_messages, text_chars
from raysight.engines.base import Engine
from raysight.errors import InvalidRequest, RaysightError, internal_error
from raysight.families import ModelInputs
from raysight.sampling import resolve_sampling
from raysight.spec import PROMPT_CHARS_PER_TOKEN as CHARS_PER_TOKEN

logger = logging.getLogger(__name__)


@dataclass
class GenerateRequest:
    """One chat to answer. Unset sampling fields take the ModelSpec's defaults."""

    messages: list[dict]
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    min_new_tokens: int = 0
    # Seeds this request's own random draws (continuous scheduler; temperature > 0).
    seed: int | None = None
    # Called from the model thread with each new piece of text, for streaming.
    on_text: Callable[[str], None] | None = None
    # Set (by the server) when the client went away: generation stops at the next token.
    cancelled: threading.Event | None = None

    @classmethod
    def from_prompt(cls, prompt: str | None, image: Any = None, **kwargs) -> "GenerateRequest":
        """A plain (image, prompt) pair as a one-turn chat."""
        return cls(messages=prompt_messages(prompt, image), **kwargs)


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    # "stop" (end-of-sequence), "length" (hit max_new_tokens) or "cancelled" (client gone)
    finish_reason: str


@dataclass
class PreparedChat:
    """A preprocessed chat: model inputs plus the sampling settings that group it."""

    inputs: ModelInputs
    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_p: float
    on_text: Callable[[str], None] | None = None
    group: Hashable = field(default=None)
    seed: int | None = None
    cancelled: threading.Event | None = None
    # Set when the response cache may answer this chat (greedy, cache on): the cache's key.
    response_key: str | None = None


@dataclass
class GeneratedTokens:
    """One item's new token ids, cut at its own limit / end-of-sequence."""

    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str


class GenerateEngine(Engine):
    """images + chat -> text for any generative family."""

    task = "generate"

    def __init__(self, loaded):
        super().__init__(loaded)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer = tokenizer
        self.eos_ids = self.family.stop_token_ids(self.model, tokenizer)
        self.pad_token_id = self.family.pad_token_id(self.model, tokenizer, self.eos_ids)
        self.caches = EngineCaches(self.spec)
        install_preprocess_cache(self.processor, self.caches.preprocess)
        self.image_features = self._image_feature_cache()

    def _image_feature_cache(self):
        from raysight.engines.vision import ImageFeatureCache, accepts_encoder_outputs

        reusable = (accepts_encoder_outputs(self.model)
                    and self.family.reuses_image_features(self.loaded.model_type))
        if self.caches.vision is None or not reusable:
            self.caches.vision = None  # BLIP and others encode their pixels inside generate
            return None
        return ImageFeatureCache(
            self.model, self.family, self.caches.vision, self.device, self.dtype, self.pixels
        )

    def cache_stats(self):
        """Hits, misses, evictions and bytes of each cache this engine has turned on."""
        return self.caches.stats()

    # -- 1. preprocess (CPU, per item) ---------------------------------------------------
    def preprocess(self, request: GenerateRequest) -> PreparedChat:
        from raysight.images import check_image_count

        spec = self.spec
        sampling = resolve_sampling(
            spec.generation,
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.min_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
        )
        # Bounds checked by counting, before the prompt is tokenized or any image decoded.
        self._check_prompt_chars(request.messages)
        images_given = count_images(request.messages)
        check_image_count(images_given, spec.images)
        self.family.check_image_count(images_given)
        messages, images = split_messages(
            request.messages, self.load_image
        )
        # Each image is hashed once, here; the preprocess cache is handed the same keys.
        keys = tuple(map(image_key, images)) if images and self._needs_image_keys else ()
        with known_image_keys(images, keys):
            inputs = self.family.build_inputs(self.processor, messages, images)
        if keys:
            inputs = dataclasses.replace(inputs, image_keys=keys)
        if inputs.prompt_tokens > spec.max_text_tokens:
            raise InvalidRequest(
                f"the prompt is {inputs.prompt_tokens} tokens long; this model accepts at most "
                f"{spec.max_text_tokens} (max_text_tokens)"
            )
        group = (
            self.family.batch_key(inputs),
            sampling.min_new_tokens,
            None if sampling.greedy else (sampling.temperature, sampling.top_p),
        )
        response_key = None
        if sampling.greedy and spec.response_cache:
            response_key = digest([spec.model, spec.revision, inputs.tensors.get("input_ids"),
                                   inputs.image_keys, sampling.max_new_tokens,
                                   sampling.min_new_tokens])
        return PreparedChat(
            inputs=inputs,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            # Below GREEDY_BELOW a temperature decodes greedily (its logits would overflow).
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p,
            on_text=request.on_text,
            group=group,
            response_key=response_key,
            seed=request.seed,
            cancelled=request.cancelled,
        )

    def _check_prompt_chars(self, messages: list) -> None:
        """Refuse a prompt too long for max_text_tokens by its characters, before spending
        tokenizer time on it: no prompt of more than CHARS_PER_TOKEN characters per allowed
        token could fit."""
        limit = self.spec.max_text_tokens * CHARS_PER_TOKEN
        given = text_chars(messages)
        if given > limit:
            raise InvalidRequest(
                f"the prompt is {given:,} characters long; this model accepts at most "
                f"{self.spec.max_text_tokens} tokens (max_text_tokens), so prompts over "
                f"{limit:,} characters ({CHARS_PER_TOKEN} per token) are refused unread"
            )

    @property
    def _needs_image_keys(self) -> bool:
        """Whether any cache looks images up by content (and so needs their keys)."""
        spec = self.spec
        return bool(spec.preprocess_cache_bytes or spec.vision_cache_bytes or spec.response_cache)

    # -- 2. infer (device, one batched call per compatible group) ------------------------
    def infer(self, batch: list[PreparedChat]) -> list[GeneratedTokens | RaysightError]:
        results: list[GeneratedTokens | RaysightError | None] = [None] * len(batch)
        self.answer_from_cache(batch, results)
        groups: dict[Hashable, list[int]] = {}
        for index, item in enumerate(batch):
            if results[index] is None:
                groups.setdefault(item.group, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.spec.max_batch_size):
                chunk = indices[start : start + self.spec.max_batch_size]
                self._infer_group(batch, chunk, results)
        self.remember_answers(batch, results)
        return results  # type: ignore[return-value]

    def answer_from_cache(self, batch: list[PreparedChat], results: list) -> None:
        cache = self.caches.response
        if cache is None:
            return
        for index, item in enumerate(batch):
            if item.response_key is None:
                continue
            answer = cache.get(item.response_key)
            if answer is not None:
                results[index] = dataclasses.replace(answer, token_ids=list(answer.token_ids))
                if item.on_text is not None and answer.token_ids:
                    item.on_text(self.tokenizer.decode(answer.token_ids, skip_special_tokens=True))

    def remember_answers(self, batch: list[PreparedChat], results: list) -> None:
        cache = self.caches.response
        if cache is None:
            return
        for item, result in zip(batch, results):
            if item.response_key is not None and isinstance(result, GeneratedTokens):
                stored = dataclasses.replace(result, token_ids=list(result.token_ids))
                cache.put(item.response_key, stored, 8 * len(stored.token_ids))

    def _infer_group(self, batch, chunk: list[int], results: list) -> None:
        items = [batch[i] for i in chunk]
        try:
            outputs = self._generate(items)
        except Exception as exc:  # noqa: BLE001 - isolate the failing item below
            if len(items) == 1:
                results[chunk[0]] = _as_item_error(exc)
                return
            logger.warning("batched generate failed (%s); retrying items one by one", exc)
            for index in chunk:
                self._infer_group(batch, [index], results)
            return
        for index, output in zip(chunk, outputs):
            results[index] = output

    def device_inputs(self, inputs: list[ModelInputs]) -> tuple[dict[str, Any], dict[str, Any]]:
        """These items collated and on the device, and `mm_encoder_outputs` when the vision
        cache supplies their image features (then the pixels are left out)."""
        import torch

        from raysight.engines.vision import on_device

        batch = self.family.collate(inputs, self.pad_token_id)
        encoded: dict[str, Any] = {}
        if self.image_features is not None:
            with torch.inference_mode():
                outputs = self.image_features.encoder_outputs(inputs)
            if outputs is not None:  # the model takes the features instead of the pixels
                encoded["mm_encoder_outputs"] = outputs
                for key in self.family.encoder_only_keys:
                    batch.pop(key, None)
        return on_device(batch, self.device, self.dtype, self.pixels), encoded

    def _generate(self, items: list[PreparedChat]) -> list[GeneratedTokens]:
        import torch

        batch, encoded = self.device_inputs([item.inputs for item in items])
        first = items[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
        streamer = _RowStreamer(self, items) if any(i.on_text for i in items) else None
        stopping = None
        if any(item.cancelled is not None for item in items):
            from transformers import StoppingCriteriaList

            stopping = StoppingCriteriaList([_ClientGone(items)])
        with torch.inference_mode():
            sequences = self.model.generate(
                **batch,
                max_new_tokens=max(item.max_new_tokens for item in items),
                min_new_tokens=first.min_new_tokens or None,
                streamer=streamer,
                stopping_criteria=stopping,
                **encoded,
                **self.family.generate_kwargs(self.pad_token_id),
                **sampling,
            )
        start = self.family.generated_start(batch)
        new_tokens = sequences[:, start:].tolist()
        return [self._cut(row, item) for row, item in zip(new_tokens, items)]

    def _cut(self, row: list[int], item: PreparedChat) -> GeneratedTokens:
        kept: list[int] = []
        finish = "length"
        for token in row[: item.max_new_tokens]:
            if token in self.eos_ids:
                finish = "stop"
                break
            kept.append(token)
        if item.cancelled is not None and item.cancelled.is_set() and finish == "length" \
                and len(kept) < item.max_new_tokens:
            finish = "cancelled"
        return GeneratedTokens(kept, item.inputs.prompt_tokens, finish)

    # -- 3. postprocess (per item) -------------------------------------------------------
    def postprocess(self, output: GeneratedTokens) -> GenerateResult:
        text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True).strip()
        return GenerateResult(
            text=text,
            token_ids=output.token_ids,
            prompt_tokens=output.prompt_tokens,
            completion_tokens=len(output.token_ids),
            finish_reason=output.finish_reason,
        )


def _as_item_error(exc: Exception) -> RaysightError:
    """A typed error as it is; anything else logged under an id and answered generically."""
    if isinstance(exc, RaysightError):
        return exc
    return internal_error(logger, "generate failed for one item", exc)


class IncrementalText:
    """One sequence's decoded text, handed out as deltas: each new token's text goes to
    `on_text` once it decodes cleanly (a partial multi-byte character waits for its rest)."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        delta = text[len(self.sent):]
        if delta:
            self.sent = text
            self.on_text(delta)


class _ClientGone:
    """A stopping criterion: a row whose client went away is done at its next token (its
    batchmates go on; generate stops once every row is done)."""

    def __init__(self, items: list[PreparedChat]):
        self.events = [item.cancelled for item in items]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        gone = [event is not None and event.is_set() for event in self.events]
        return torch.tensor(gone, dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """A `generate` streamer that hands each row's new text to its item's `on_text`."""

    def __init__(self, engine: GenerateEngine, items: list[PreparedChat]):
        self.engine = engine
        self.items = items
        self.texts = [IncrementalText(engine.tokenizer, item.on_text) for item in items]
        self.counts = [0 for _ in items]
        self.done = [item.on_text is None for item in items]
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first puts the prompt itself
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            item = self.items[row]
            if token in self.engine.eos_ids:
                self.done[row] = True
                continue
            self.counts[row] += 1
            if self.counts[row] >= item.max_new_tokens:
                self.done[row] = True
            self.texts[row].add(token)

    def end(self) -> None:
        pass
