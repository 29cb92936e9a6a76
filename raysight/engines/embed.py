"""The embed engine for dual encoders: image -> vector, text -> vector, and zero-shot
classification (image + labels -> probabilities). Vectors are L2-normalised."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from raysight.caching import EngineCaches, cached_batch, image_key, install_preprocess_cache
from raysight.engines.base import Engine
from raysight.errors import InvalidRequest, RaysightError

_LABEL_CACHE_SIZE = 4096


@dataclass
class EmbedRequest:
    """Exactly one of `image` / `text`; `labels` with an image asks for classification."""

    image: Any = None
    text: str | None = None
    labels: list[str] | None = None

    @property
    def kind(self) -> str:
        if self.labels is not None:
            return "classify"
        return "image" if self.image is not None else "text"


@dataclass
class PreparedEmbed:
    kind: str
    tensors: dict[str, Any]
    labels: tuple[str, ...] = ()
    tokens: int = 0
    image_key: str | None = None  # the image's content key, when the vision cache is on


@dataclass
class Embedding:
    vector: Any  # numpy float32, L2-normalised
    tokens: int = 0


@dataclass
class Classification:
    labels: list[str]  # as given
    probs: list[float]  # one per label, same order

    @property
    def label(self) -> str:
        return self.labels[max(range(len(self.probs)), key=self.probs.__getitem__)]


class EmbedEngine(Engine):
    task = "embed"

    def __init__(self, loaded):
        super().__init__(loaded)
        self.tokenizer = self.processor.tokenizer
        limit = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        self.max_text_tokens = min(limit, self.spec.max_text_tokens)
        self._label_vectors: OrderedDict[str, Any] = OrderedDict()
        self.caches = EngineCaches(self.spec)
        install_preprocess_cache(self.processor, self.caches.preprocess)

    def cache_stats(self):
        """Hits, misses, evictions and bytes of each cache this engine has turned on."""
        return self.caches.stats()

    # -- 1. preprocess -------------------------------------------------------------------
    def preprocess(self, request: EmbedRequest) -> PreparedEmbed:
        from raysight.images import load_image

        has_image, has_text = request.image is not None, request.text is not None
        if has_image == has_text:
            raise InvalidRequest("give exactly one of an image or a text to embed")
        if request.kind == "classify":
            labels = tuple(request.labels or ())
            if not has_image or not labels:
                raise InvalidRequest("classification needs an image and a non-empty list of labels")
            if not all(isinstance(label, str) and label.strip() for label in labels):
                raise InvalidRequest("every label must be a non-empty string")
            image = load_image(request.image, self.spec.images)
            return self._prepared_image("classify", image, labels)
        if has_image:
            return self._prepared_image("image", load_image(request.image, self.spec.images))
        if not isinstance(request.text, str) or not request.text.strip():
            raise InvalidRequest("the text to embed must be a non-empty string")
        tensors = self._text_tensors([request.text])
        return PreparedEmbed("text", tensors, tokens=int(tensors["attention_mask"].sum()))

    def _prepared_image(self, kind: str, image, labels: tuple[str, ...] = ()) -> PreparedEmbed:
        key = image_key(image) if self.spec.vision_cache_bytes else None
        return PreparedEmbed(kind, self._image_tensors(image), labels, image_key=key)

    def _image_tensors(self, image) -> dict[str, Any]:
        return {"pixel_values": self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]}

    def _text_tensors(self, texts: list[str]) -> dict[str, Any]:
        padding = self.family.text_padding
        encoded = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        tensors = {"input_ids": encoded["input_ids"]}
        tensors["attention_mask"] = encoded.get("attention_mask", (encoded["input_ids"] * 0 + 1))
        return tensors

    # -- 2. infer ------------------------------------------------------------------------
    def infer(self, batch: list[PreparedEmbed]) -> list[Any]:
        import torch

        results: list[Any] = [None] * len(batch)
        with torch.inference_mode():
            image_rows = [i for i, item in enumerate(batch) if item.kind in ("image", "classify")]
            text_rows = [i for i, item in enumerate(batch) if item.kind == "text"]
            image_vectors = self._image_vectors([batch[i] for i in image_rows])
            text_vectors = self._text_vectors([batch[i].tensors for i in text_rows])
            for row, vector in zip(text_rows, text_vectors):
                results[row] = Embedding(vector, tokens=batch[row].tokens)
            for row, vector in zip(image_rows, image_vectors):
                item = batch[row]
                if item.kind == "image":
                    results[row] = Embedding(vector)
                else:
                    results[row] = self._classify(vector, item.labels)
        return results

    def _image_vectors(self, items: list[PreparedEmbed]) -> list[Any]:
        """One vector per image item; the vision cache's vectors reused where it has them."""
        cache = self.caches.vision
        if cache is None or any(item.image_key is None for item in items):
            return list(self._encode_images([item.tensors for item in items]))
        tensors = {item.image_key: item.tensors for item in items}
        return cached_batch(
            cache,
            [item.image_key for item in items],
            lambda missing: list(self._encode_images([tensors[key] for key in missing])),
        )

    def _encode_images(self, items: list[dict]):
        import torch

        if not items:
            return []
        pixels = torch.cat([item["pixel_values"] for item in items], dim=0)
        pixels = pixels.to(self.device, dtype=self.dtype)
        features = _projected(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def _text_vectors(self, items: list[dict]):
        import torch

        if not items:
            return []
        width = max(item["input_ids"].shape[1] for item in items)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            length = item["input_ids"].shape[1]
            ids[row, :length] = item["input_ids"][0]
            mask[row, :length] = item["attention_mask"][0]
        features = _projected(
            self.model.get_text_features(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            )
        )
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def _classify(self, image_vector, labels: tuple[str, ...]) -> Classification:
        import torch

        missing = [label for label in dict.fromkeys(labels) if label not in self._label_vectors]
        if missing:
            vectors = self._text_vectors([self._text_tensors([label]) for label in missing])
            for label, vector in zip(missing, vectors):
                self._label_vectors[label] = vector
                if len(self._label_vectors) > _LABEL_CACHE_SIZE:
                    self._label_vectors.popitem(last=False)
        label_matrix = torch.stack([self._label_vectors[label] for label in labels])
        similarities = image_vector.unsqueeze(0) @ label_matrix.T
        probs = self.family.label_probabilities(self.model, similarities.to(self.model.logit_scale.dtype))
        return Classification(list(labels), probs[0].float().tolist())

    # -- 3. postprocess ------------------------------------------------------------------
    def postprocess(self, output: Any) -> Any:
        if isinstance(output, Embedding):
            return Embedding(output.vector.cpu().numpy().astype("float32"), output.tokens)
        if isinstance(output, (Classification, RaysightError)):
            return output
        raise TypeError(f"unexpected embed output {type(output).__name__}")


def _projected(output):
    """transformers 5 returns an output object; the projected vector is its pooler_output."""
    return getattr(output, "pooler_output", output)
