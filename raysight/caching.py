"""Caches that let an engine skip work it has already done, each bounded in bytes (LRU).

- preprocess: the image processor's output per image, keyed by the image's pixels and the
  processor's settings (`CachingImageProcessor` wraps the processor's `image_processor`);
- vision: the vision encoder's output per image (generate) or the image's vector (embed),
  keyed by the image's pixels; the engines look it up in `infer`;
- response: a whole answer to a deterministic (greedy) request, keyed by everything the
  model sees. Off unless the ModelSpec turns it on.

A cache never changes an answer: a hit returns what the same work would compute.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

PREPROCESS = "preprocess"
VISION = "vision"
RESPONSE = "response"

# What one entry costs beyond its tensors' bytes (keys, dict and list slots), roughly.
_ENTRY_OVERHEAD = 256


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one cache's counters (cumulative since the cache was made)."""

    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class ByteLRU:
    """A thread-safe LRU map whose values' sizes (in bytes) never add up past `max_bytes`."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> Any | None:
        """The value under `key` (now the most recently used), or None; counts a hit or miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def record_hits(self, count: int) -> None:
        """Count work saved without a lookup (an image repeated within one batch)."""
        if count > 0:
            with self._lock:
                self.hits += count

    def put(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Store `value`, evicting the least recently used entries to make room.

        A value larger than the whole cache is not stored (returns False)."""
        size = nbytes + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1
            self._entries[key] = (value, size)
            self._bytes += size
            return True

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, self._bytes,
                              len(self._entries), self.max_bytes)


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors (and arrays) in `value`: a tensor, a mapping or a sequence."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def image_key(image) -> str:
    """The content key of a decoded image: equal pixels (and mode and size), equal key.

    It hashes every pixel, so an engine computes it once per image and request and hands it
    to the preprocess cache with `known_image_keys` instead of letting it hash again."""
    from raysight.images import image_digest

    return image_digest(image)


# (image, key) pairs an engine has already hashed, for the call in progress (see below).
_known_keys: ContextVar[tuple[tuple[Any, str], ...]] = ContextVar("known_image_keys",
                                                                   default=())


@contextmanager
def known_image_keys(images: Iterable[Any], keys: Iterable[str]):
    """Within the block, `CachingImageProcessor` takes these images' keys as given (matched
    by identity, so only these very objects) instead of hashing their pixels again."""
    token = _known_keys.set(tuple(zip(images, keys)))
    try:
        yield
    finally:
        _known_keys.reset(token)


def _key_of(image) -> str:
    for known, key in _known_keys.get():
        if known is image:
            return key
    return image_key(image)


def digest(parts: Iterable[Any]) -> str:
    """A hex digest of bytes and strings, in order (tensors count by their bytes)."""
    hasher = hashlib.blake2b(digest_size=16)
    for part in parts:
        if hasattr(part, "numpy"):
            part = part.detach().cpu().contiguous().numpy().tobytes()
        elif not isinstance(part, bytes):
            part = repr(part).encode()
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def cached_batch(cache: ByteLRU, keys: list[Hashable], compute: Callable[[list], list]) -> list:
    """Values for `keys` (in order, repeats allowed): cached ones reused, the others made by
    one `compute(missing keys)` call and stored. A key repeated within the call is computed
    once, so its repeats count as hits. Values are tensors."""
    unique = list(dict.fromkeys(keys))
    values: dict[Hashable, Any] = {}
    for key in unique:
        hit = cache.get(key)
        if hit is not None:
            values[key] = hit
    cache.record_hits(len(keys) - len(unique))
    missing = [key for key in unique if key not in values]
    if missing:
        for key, value in zip(missing, compute(missing)):
            # A copy with its own storage: a view would keep the whole batch's output alive.
            value = value.clone()
            cache.put(key, value, tensor_bytes(value))
            values[key] = value
    return [values[key] for key in keys]


class EngineCaches:
    """The caches one engine owns, as its ModelSpec sizes them (None where turned off)."""

    def __init__(self, spec):
        def sized(max_bytes: int, enabled: bool = True) -> ByteLRU | None:
            return ByteLRU(max_bytes) if enabled and max_bytes else None

        self.preprocess = sized(spec.preprocess_cache_bytes)
        self.vision = sized(spec.vision_cache_bytes)
        self.response = sized(spec.response_cache_bytes, spec.response_cache)

    def stats(self) -> dict[str, CacheStats]:
        """Each enabled cache's counters, by cache name."""
        named = {PREPROCESS: self.preprocess, VISION: self.vision, RESPONSE: self.response}
        return {name: cache.stats() for name, cache in named.items() if cache is not None}


class CachingImageProcessor:
    """Wraps an image processor so each image is processed once per processor setting.

    A call over several images looks each up by (pixels, settings); the misses are processed
    one by one and every image's tensors are concatenated along dim 0, which is what the
    processor returns for the whole list. Anything the wrapper does not understand (no
    tensors asked for, not PIL images, non-tensor outputs) goes to the processor untouched.
    """

    def __init__(self, inner, cache: ByteLRU):
        self.inner = inner
        self.cache = cache
        self._settings = _settings_fingerprint(inner)

    def __getattr__(self, name: str):
        # Processors read the image processor's settings (merge_size, crop_size, ...).
        return getattr(self.__dict__["inner"], name)

    def __call__(self, images=None, *args, **kwargs):
        from PIL import Image

        flat = images if isinstance(images, (list, tuple)) else [images]
        if (args or kwargs.get("return_tensors") != "pt" or not flat
                or not all(isinstance(image, Image.Image) for image in flat)):
            return self.inner(images, *args, **kwargs)
        settings = (self._settings, _kwargs_fingerprint(kwargs))
        parts = []
        for image in flat:
            key = (_key_of(image), settings)
            part = self.cache.get(key)
            if part is None:
                part = dict(self.inner([image], **kwargs))
                if not all(hasattr(value, "shape") for value in part.values()):
                    return self.inner(images, **kwargs)
                self.cache.put(key, part, tensor_bytes(part))
            parts.append(part)
        return _concatenated(parts)


def _concatenated(parts: list[dict]):
    import torch
    from transformers import BatchFeature

    return BatchFeature({key: torch.cat([part[key] for part in parts], dim=0) for key in parts[0]})


def _settings_fingerprint(processor) -> str:
    try:
        settings = processor.to_dict()
    except Exception:  # noqa: BLE001 - a processor without to_dict: its class and attributes
        settings = {"class": type(processor).__name__, **vars(processor)}
    return digest([json.dumps(settings, sort_keys=True, default=repr)])


def _kwargs_fingerprint(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True, default=repr)


def install_preprocess_cache(processor, cache: ByteLRU | None) -> None:
    """Give `processor` (a multimodal processor) a caching image processor, in place."""
    if cache is None or not hasattr(processor, "image_processor"):
        return
    if not isinstance(processor.image_processor, CachingImageProcessor):
        processor.image_processor = CachingImageProcessor(processor.image_processor, cache)
