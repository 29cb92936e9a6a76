"""What one GPU check runs: the full check (realistic sizes, made for one GPU in <= 8
minutes) and --tiny (the same steps on tiny models: the CI smoke on CPU)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class CheckSettings:
    """Every knob of a check run."""

    tiny: bool
    # Architecture -> named size (tests/fixtures/random_models.py NAMED_SIZES).
    models: dict[str, str]
    embed_arch: str = "clip"
    generate_arch: str = "qwen2-vl"
    dtypes: tuple[str, ...] = ("bfloat16", "float16")
    equality_rows: int = 8  # chats (or images and texts) compared batched against alone
    equality_tokens: int = 16
    clients: tuple[int, ...] = (1, 8, 32, 64)
    window_s: float = 3.0
    new_tokens: int = 16  # per chat while measuring throughput
    max_batch_size: int = 64  # embeddings and generation, served and ceiling
    offline_images: int = 2000
    offline_batch: int = 64
    offline_loop_s: float = 60.0  # the plain loop's time limit over the images

    @property
    def generative(self) -> tuple[str, ...]:
        return tuple(arch for arch in self.models if arch != self.embed_arch)


FULL = CheckSettings(
    tiny=False,
    models={"clip": "clip-vit-l14", "qwen2-vl": "qwen2-vl-2b", "llava": "llava-tinyllama"},
)
TINY = CheckSettings(
    tiny=True, models={"clip": "tiny", "qwen2-vl": "tiny", "llava": "tiny"},
    equality_rows=4, equality_tokens=4, clients=(1, 8), window_s=0.5, new_tokens=4,
    max_batch_size=8, offline_images=64, offline_batch=16, offline_loop_s=10.0,
)
