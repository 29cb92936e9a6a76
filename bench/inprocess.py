"""The model's own ceiling: raysight's engine called in this process, no HTTP, no queue.

`EngineRunner` holds one engine and the requests every variant sends; `measure` runs
batches of one size for a while and reports items (and tokens) per second. The batch-size
sweep and the online scenarios' ceilings both use it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench.loadgen import percentile


def use_all_cores() -> int:
    """What a Serve replica does (deployment.use_cores): torch gets every core."""
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    return cores


@dataclass
class Measured:
    items_per_s: float
    tokens_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float


class EngineRunner:
    """One engine and the requests of a scenario (the same images the clients send)."""

    def __init__(self, folder: str, max_batch_size: int, images: int = 64, max_tokens: int = 16,
                 **spec_options):
        from raysight.engines import build_engine
        from raysight.spec import ModelSpec

        from bench.payloads import PROMPT, data_url, jpeg_images

        use_all_cores()
        # Caches off: the ceiling is the model's work on images it has not seen (the
        # servers get a new image with every request, see bench/loadgen.py). `spec_options`:
        # other ModelSpec fields (the GPU check's device and dtype).
        self.engine = build_engine(ModelSpec(model=folder, max_batch_size=max_batch_size,
                                             preprocess_cache_bytes=0, vision_cache_bytes=0,
                                             **spec_options))
        urls = [data_url(image) for image in jpeg_images(images, seed=1)]
        if self.engine.task == "embed":
            from raysight.engines.embed import EmbedRequest

            self.requests = [EmbedRequest(image=url) for url in urls]
        else:
            from raysight.engines.generate import GenerateRequest

            self.requests = [GenerateRequest.from_prompt(PROMPT, url, max_new_tokens=max_tokens)
                             for url in urls]
        self._prepared = None
        self._warm: set[tuple[int, bool]] = set()

    def with_max_tokens(self, max_tokens: int) -> "EngineRunner":
        """A runner of the same chats asking for `max_tokens` new tokens, on this runner's
        engine (no second model load; a batch size it has run is warm for both)."""
        import copy
        import dataclasses

        other = copy.copy(self)
        other.requests = [dataclasses.replace(r, max_new_tokens=max_tokens)
                          for r in self.requests]
        other._prepared = None
        return other

    def measure(self, batch: int, seconds: float, forward_only: bool = False) -> Measured:
        """Run batches of `batch` for about `seconds` (at least one batch, after one
        uncounted warm-up batch the first time). `forward_only` skips decoding and
        preprocessing."""
        if forward_only and self._prepared is None:
            self._prepared = [self.engine.preprocess(r) for r in self.requests]
        source = self._prepared if forward_only else self.requests
        step = self.engine.infer_and_postprocess if forward_only else self.engine.run

        def run(offset: int) -> list:
            chosen = [source[(offset + i) % len(source)] for i in range(batch)]
            return step(chosen)

        if (batch, forward_only) not in self._warm:
            run(0)  # warm-up: the first call at a new shape builds kernels
            self._warm.add((batch, forward_only))
        items = tokens = 0
        durations: list[float] = []
        started = time.perf_counter()
        while not durations or time.perf_counter() - started < seconds:
            began = time.perf_counter()
            results = run(items)
            durations.append(time.perf_counter() - began)
            items += batch
            tokens += sum(getattr(r, "completion_tokens", 0) for r in results)
        elapsed = time.perf_counter() - started
        return Measured(items / elapsed, tokens / elapsed, 1000 * percentile(durations, 0.5),
                        1000 * percentile(durations, 0.99))
