"""The shape every engine has: preprocess (CPU, per item), infer (one batched call on the
device), postprocess (per item). Serve deployments and Ray Data mappers only call these."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from raysight.errors import RaysightError, internal_error
from raysight.pixels import install_raw_pixels

logger = logging.getLogger(__name__)


class Engine:
    """Base class: holds the loaded model and runs the three steps with per-item errors."""

    task = ""

    def __init__(self, loaded):
        self.loaded = loaded
        self.spec = loaded.spec
        self.model = loaded.model
        self.processor = loaded.processor
        self.family = loaded.family
        self.device = loaded.device
        self.dtype = loaded.dtype
        from raysight.image_decode import working_size_for

        self.image_working_size = working_size_for(self.processor)
        self.batch_choice = None  # how `max_batch_size: auto` was resolved (autobatch.py)
        # Before any cache wraps the processor: preprocess hands out uint8 pixels, and the
        # model's normalisation runs next to the forward (None: this processor's pixels stay
        # float32). See raysight/pixels.py.
        self.pixels = install_raw_pixels(self.processor, self.family.pixel_layout)

    def load_image(self, source: Any):
        """Decode one image source within the spec's image policy, reduced early toward what
        this model's processor keeps (raysight.image_decode.WorkingSize)."""
        from raysight.image_decode import working_size
        from raysight.images import load_image

        with working_size(self.image_working_size):
            return load_image(source, self.spec.images)

    def preprocess(self, request: Any) -> Any:
        raise NotImplementedError

    def infer(self, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

    def postprocess(self, output: Any) -> Any:
        raise NotImplementedError

    def preprocess_safely(self, request: Any) -> Any:
        """preprocess, with any failure returned as a RaysightError instead of raised; an
        unexpected exception becomes an InternalError (its details go to the log only)."""
        try:
            return self.preprocess(request)
        except RaysightError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the batch
            return internal_error(logger, "preprocess failed", exc)

    def infer_and_postprocess(self, prepared: Sequence[Any]) -> list[Any]:
        """Run infer on the items that prepared cleanly; errors keep their places."""
        ready = [i for i, item in enumerate(prepared) if not isinstance(item, RaysightError)]
        results: list[Any] = list(prepared)
        if ready:
            outputs = self._infer_isolating([prepared[i] for i in ready])
            for index, output in zip(ready, outputs):
                if isinstance(output, RaysightError):
                    results[index] = output
                    continue
                try:
                    results[index] = self.postprocess(output)
                except RaysightError as exc:
                    results[index] = exc
                except Exception as exc:  # noqa: BLE001
                    results[index] = internal_error(logger, "postprocess failed", exc)
        return results

    def _infer_isolating(self, items: list[Any]) -> list[Any]:
        """infer; if the batch raises, each item alone, so only the one that fails fails."""
        try:
            return self.infer(items)
        except Exception as exc:  # noqa: BLE001 - find the item that breaks the batch
            if len(items) == 1:
                if isinstance(exc, RaysightError):
                    return [exc]
                return [internal_error(logger, "infer failed for one item", exc)]
            logger.warning("a batch of %d failed (%r); running its items one by one",
                           len(items), exc)
            return [output for item in items for output in self._infer_isolating([item])]

    def run(self, requests: Sequence[Any]) -> list[Any]:
        """All three steps over `requests`; each result is an answer or a RaysightError."""
        return self.infer_and_postprocess([self.preprocess_safely(r) for r in requests])
