"""The vision-feature cache on the model's device gives the same tokens.

With `vision_cache_bytes` on, the generate engine encodes each image once and keeps its
features on the model's device (raysight/engines/vision.py). The check runs the same
batch twice on an engine with the cache on: the first pass encodes every image (misses),
the second takes every image's features from the cache (hits). Its tokens must equal the
first pass's exactly (the same feature tensors), and the first pass must match the engine
without the cache by the near-tie rule (bench/gpu_check/equality.py: `generate` encoding
the pixels itself sums in another order). Every cached feature must sit on the model's
device, not in host memory.
"""

from __future__ import annotations

from bench.gpu_check.equality import Generated, compare_runs, generate_batched


def vision_cache_check(engine, requests: list, uncached: list[Generated]) -> dict:
    """`engine` has the vision cache on; `uncached` is the same requests' batched run on an
    engine of the same model and dtype with the cache off."""
    cache = engine.caches.vision
    if cache is None or engine.image_features is None:
        raise RuntimeError(f"{engine.family.name}: the vision cache is not on for this engine")
    prepared = [engine.preprocess(request) for request in requests]
    first = generate_batched(engine, prepared)
    after_first = cache.stats()
    second = generate_batched(engine, prepared)
    after_second = cache.stats()
    keys = {key for item in prepared for key in item.inputs.image_keys}
    devices = sorted({str(feature.device) for feature in (cache.get(key) for key in keys)
                      if feature is not None})
    hits = after_second.hits - after_first.hits
    on_device = bool(devices) and all(d.split(":")[0] == engine.device.split(":")[0]
                                      for d in devices)
    repeat_equal = [a.token_ids == b.token_ids for a, b in zip(first, second)]
    against_uncached = compare_runs(uncached, first, engine.dtype)
    return {
        "images": len(keys),
        "misses_first_pass": after_first.misses,
        "hits_second_pass": hits,
        "feature_devices": devices,
        "hits_equal_misses": all(repeat_equal),
        "against_uncached": against_uncached,
        "passed": (hits >= len(keys) and all(repeat_equal) and on_device
                   and against_uncached["passed"]),
    }
