"""The embed engine for dual encoders: image -> vector, text -> vector, and zero-shot
classification (image + labels -> probabilities). Vectors are L2-normalised."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from raysight.caching import (EngineCaches, cached_batch, image_key, install_preprocess_cache,
                              known_image_keys)
from raysight.engines.base import Engine
from raysight.errors import InvalidRequest, RaysightError
from raysight.text import check_encodable, check_length

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
    image_key: str | None = None  # the image's content key, when a cache needs it
    # Classify: the token tensors of the labels the label cache did not hold at preprocess.
    label_tensors: dict[str, dict[str, Any]] = field(default_factory=dict)


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
        has_image, has_text = request.image is not None, request.text is not None
        if has_image == has_text:
            raise InvalidRequest("give exactly one of an image or a text to embed")
        if isinstance(request.image, str):
            check_encodable(request.image, "image")
        if request.kind == "classify":
            labels = tuple(request.labels or ())
            if not has_image or not labels:
                raise InvalidRequest("classification needs an image and a non-empty list of labels")
            self._check_labels(labels)
            image = self.load_image(request.image)
            prepared = self._prepared_image("classify", image, labels)
            # Tokenized here, per request: a label the tokenizer refuses fails this request
            # alone, never the batch it would have joined.
            prepared.label_tensors = {
                label: self._text_tensors([label])
                for label in dict.fromkeys(labels)
                if label not in self._label_vectors
            }
            return prepared
        if has_image:
            return self._prepared_image("image", self.load_image(request.image))
        if not isinstance(request.text, str) or not request.text.strip():
            raise InvalidRequest("the text to embed must be a non-empty string")
        check_length(len(request.text), "text", self.spec.max_text_tokens)
        check_encodable(request.text, "text")
        tensors = self._text_tensors([request.text])
        return PreparedEmbed("text", tensors, tokens=int(tensors["attention_mask"].sum()))

    def _check_labels(self, labels: tuple) -> None:
        limit = self.spec.max_labels_per_request
        if len(labels) > limit:
            raise InvalidRequest(
                f"{len(labels)} labels in one request; the limit is {limit} "
                "(max_labels_per_request); split the labels over several requests"
            )
        for position, label in enumerate(labels):
            if not isinstance(label, str) or not label.strip():
                raise InvalidRequest(f"labels[{position}] must be a non-empty string")
            check_length(len(label), f"labels[{position}]", self.spec.max_text_tokens)
            check_encodable(label, f"labels[{position}]")
        # Each label is tokenized apart: many long labels cost as much as one long text.
        check_length(sum(map(len, labels)), "the labels' text", self.spec.max_text_tokens)

    def _prepared_image(self, kind: str, image, labels: tuple[str, ...] = ()) -> PreparedEmbed:
        # Hashed once here; the preprocess cache reuses the key instead of hashing again.
        cached = self.spec.vision_cache_bytes or self.spec.preprocess_cache_bytes
        key = image_key(image) if cached else None
        with known_image_keys([image], [key] if key else []):
            tensors = self.family.image_tensors(self.processor, image)
        return PreparedEmbed(kind, tensors, labels, image_key=key)

    def _text_tensors(self, texts: list[str]) -> dict[str, Any]:
        return self.family.text_tensors(self.tokenizer, texts, self.max_text_tokens)

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
                    results[row] = self._classify(vector, item)
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
        """Normalised vectors of these images' tensors, max_batch_size images per forward."""
        import torch

        from raysight.engines.vision import on_device

        vectors = []
        for chunk in self._chunks(items):
            inputs = [on_device(item, self.device, self.dtype, self.pixels) for item in chunk]
            features = self.family.encode_images(self.model, inputs)
            vectors.extend(torch.nn.functional.normalize(features.float(), dim=-1))
        return vectors

    def _text_vectors(self, items: list[dict]):
        """Normalised vectors of these texts' tensors, max_batch_size texts per forward.

        A chunk is padded on the right to its longest text (masked), which leaves each
        text's vector as it is alone; max_length families give equal widths anyway."""
        import torch

        pad = self.tokenizer.pad_token_id or 0
        vectors = []
        for chunk in self._chunks(items):
            width = max(item["input_ids"].shape[1] for item in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, item in enumerate(chunk):
                length = item["input_ids"].shape[1]
                ids[row, :length] = item["input_ids"][0]
                mask[row, :length] = item["attention_mask"][0]
            features = self.family.encode_texts(
                self.model, ids.to(self.device), mask.to(self.device)
            )
            vectors.extend(torch.nn.functional.normalize(features.float(), dim=-1))
        return vectors

    def _chunks(self, items: list) -> list[list]:
        size = self.spec.max_batch_size
        return [items[start : start + size] for start in range(0, len(items), size)]

    def _classify(self, image_vector, item: PreparedEmbed) -> Classification:
        import torch

        labels = item.labels
        # This request's vectors are held here, apart from the cache, so that evicting
        # (a request with more labels than the cache holds) never loses one before use.
        vectors = {label: self._label_vectors[label]
                   for label in dict.fromkeys(labels) if label in self._label_vectors}
        missing = [label for label in dict.fromkeys(labels) if label not in vectors]
        if missing:
            # Tokenized in preprocess, unless the cache held a label then and evicted it since.
            tensors = [item.label_tensors.get(label) for label in missing]
            tensors = [found if found is not None else self._text_tensors([label])
                       for found, label in zip(tensors, missing)]
            for label, vector in zip(missing, self._text_vectors(tensors)):
                vectors[label] = vector
                self._label_vectors[label] = vector
                if len(self._label_vectors) > _LABEL_CACHE_SIZE:
                    self._label_vectors.popitem(last=False)
        label_matrix = torch.stack([vectors[label] for label in labels])
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
