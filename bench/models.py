"""The benchmark models: real architectures at realistic sizes, random weights, built
offline once and cached (a ViT-B/32 CLIP takes ~10 s to build)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchModel:
    """One built model folder and what it is."""

    role: str  # "embed" or "generate"
    architecture: str
    size_name: str
    folder: str
    params: int
    vision_params: int

    def describe(self) -> str:
        return (f"{self.architecture} '{self.size_name}': {self.params / 1e6:.1f}M parameters "
                f"({self.vision_params / 1e6:.1f}M in the vision tower)")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "raysight" / "bench-models"


def build_bench_model(role: str, architecture: str, size_name: str) -> BenchModel:
    """The model folder for (`architecture`, named size), built unless already cached."""
    from tests.fixtures.random_models import NAMED_SIZES, build_random_model

    size = NAMED_SIZES[size_name]
    tag = hashlib.sha1(json.dumps(asdict(size), sort_keys=True).encode()).hexdigest()[:8]
    folder = cache_root() / f"{architecture}-{size_name}-{tag}"
    marker = folder / "bench-model.json"
    if not marker.exists():
        build_random_model(architecture, folder, size)
        marker.write_text(json.dumps(count_params(folder)))
    counts = json.loads(marker.read_text())
    return BenchModel(role, architecture, size_name, str(folder), counts["params"],
                      counts["vision_params"])


def count_params(folder: Path) -> dict[str, int]:
    """All parameters in the safetensors of `folder`, and those of the vision tower."""
    from safetensors import safe_open

    total = vision = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
                if "vision_model." in name or name.startswith(("visual.", "model.visual.")):
                    vision += count
    return {"params": total, "vision_params": vision}


def bench_models(quick: bool) -> dict[str, BenchModel]:
    """The embed and generate models of a run: tiny ones for --quick."""
    if quick:
        return {"embed": build_bench_model("embed", "clip", "tiny"),
                "generate": build_bench_model("generate", "qwen2-vl", "tiny")}
    return {"embed": build_bench_model("embed", "clip", "clip-vit-b32"),
            "generate": build_bench_model("generate", "qwen2-vl", "qwen2-vl-bench")}
