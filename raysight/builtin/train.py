"""Reproduce the built-in models from scratch: ``python -m raysight.builtin.train all``.

``all`` trains shapes-clip, then shapes-vlm, whose vision tower starts from that shapes-clip
and is distilled from it (`raysight.builtin.train_vlm`); ``shapes-clip`` or ``shapes-vlm``
trains one (shapes-vlm then learns from the shipped shapes-clip, or ``--teacher FOLDER``).

Both models learn from a pool of drawn shapes that is redrawn bit by bit as training goes
(preprocessed by the model's own processor, exactly as at inference) and are scored on
shapes drawn from another seed. The drawings are varied (`raysight.builtin.augment`: sizes,
places, anti-aliasing, backgrounds, blur, JPEG) so that the models recognise shapes drawn by
other renderers too, not only by `raysight.shapes`. The same seed, step count and thread
count give the same weights on the same torch build.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

# Training draws from seed S; held-out scoring from S + this, far from any seed tests use.
HELD_OUT_OFFSET = 100_003


@dataclass(frozen=True)
class TrainSettings:
    """How one training run goes; each model's recipe (`SETTINGS`) overrides some defaults."""

    steps: int
    seed: int = 0
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    pool_size: int = 20_000
    refresh_every: int = 50  # steps between pool refreshes
    refresh_size: int = 1_000  # images redrawn at each refresh
    held_out_size: int = 600
    log_every: int = 100
    eval_every: int = 500
    # Input side in pixels. 48, not 32: a small shape at 32 px is a few pixels across, too
    # few to tell a square from a circle once blurred or compressed.
    image_size: int = 48
    # The vision tower (pre-LayerNorm, like CLIP's) learns at this multiple of `lr`.
    vision_lr_scale: float = 1.0


def draw_training_set(n: int, seed: int) -> list:
    """`n` varied training drawings with their labels; the same seed gives the same list."""
    import numpy as np

    from raysight.builtin.augment import draw_augmented

    rng = np.random.default_rng(seed)
    return [draw_augmented(rng) for _ in range(n)]


class ShapePool:
    """Preprocessed shapes to train on, partly redrawn as training goes.

    Images go through the model's own image processor, exactly as at inference. A fixed pool
    gets memorised (a shape's shade and background identify it), so `refresh` keeps
    replacing the oldest images with new drawings.
    """

    def __init__(self, image_processor, size: int, seed: int):
        import numpy as np

        self._image_processor = image_processor
        self._rng = np.random.default_rng(seed)
        self._oldest = 0
        self.pixel_values, self.caption_index = self._draw(size)

    def __len__(self) -> int:
        return len(self.caption_index)

    def _draw(self, n: int):
        import torch

        from raysight.builtin.augment import draw_augmented
        from raysight.shapes import ALL_CAPTIONS

        drawn = [draw_augmented(self._rng) for _ in range(n)]
        chunks = []
        for start in range(0, n, 2000):
            images = [image for image, _ in drawn[start : start + 2000]]
            chunks.append(self._image_processor(images=images, return_tensors="pt")["pixel_values"])
        index = torch.tensor([ALL_CAPTIONS.index(label.caption) for _, label in drawn])
        return torch.cat(chunks), index

    def refresh(self, n: int) -> None:
        """Replace the `n` oldest images with new drawings."""
        import torch

        if n <= 0:
            return
        slots = (self._oldest + torch.arange(n)) % len(self)
        self.pixel_values[slots], self.caption_index[slots] = self._draw(n)
        self._oldest = (self._oldest + n) % len(self)

    def augmented(self, indices, generator):
        """The images at `indices`, each turned by a random quarter turn and maybe mirrored.

        Shapes are drawn at random angles and places, on gradients that point anywhere, so
        these eight symmetries keep both the labels and the data's distribution.
        """
        import torch

        pixels = self.pixel_values[indices]
        symmetry = torch.randint(0, 8, (len(indices),), generator=generator)
        out = torch.empty_like(pixels)
        for which in range(8):
            chosen = symmetry == which
            turned = torch.rot90(pixels[chosen], which % 4, dims=(-2, -1))
            out[chosen] = turned.flip(-1) if which >= 4 else turned
        return out


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def fit(
    model,
    pool: ShapePool,
    settings: TrainSettings,
    batch_loss: Callable[["object"], "object"],
    evaluate: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """Run `settings.steps` AdamW steps of `batch_loss(indices into pool)`; print progress.

    `evaluate` returns held-out scores; its "accuracy" entry is the headline number.
    Returns the final scores plus the wall time in seconds.
    """
    import torch

    # Weight decay on weight matrices only: not on embeddings, biases, norms or the temperature.
    groups: dict[tuple[bool, bool], list] = {}
    named = list(model.named_parameters())
    for name, param in named:
        key = (param.ndim >= 2 and "embedding" not in name, name.startswith("vision_model."))
        groups.setdefault(key, []).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": params, "weight_decay": settings.weight_decay if decays else 0.0,
          "scale": settings.vision_lr_scale if vision else 1.0}
         for (decays, vision), params in sorted(groups.items())],
        lr=settings.lr,
    )
    sampler = torch.Generator().manual_seed(settings.seed)
    start, window = time.perf_counter(), []
    for step in range(settings.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings) * group["scale"]
        if step and step % settings.refresh_every == 0:
            pool.refresh(settings.refresh_size)
        batch = torch.randint(0, len(pool), (settings.batch_size,), generator=sampler)
        loss = batch_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        window.append(loss.item())
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            line = f"step {done:5d}/{settings.steps}  loss {sum(window) / len(window):.4f}"
            if done % settings.eval_every == 0 or done == settings.steps:
                model.eval()
                with torch.no_grad():
                    scores = evaluate()
                line += "  held-out " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(f"{line}  ({time.perf_counter() - start:.0f} s)", flush=True)
            window = []
    model.eval()
    return {**scores, "wall_seconds": round(time.perf_counter() - start, 1)}


def warm_start(model, init: Path):
    """Load the weights saved in `init` into `model`, whose input may be larger.

    The vision tower's position embeddings (one per patch of a square grid, after one for
    the class token) are resized to the new grid bicubically, so a model trained at 32 px
    can continue at 48 px; every other weight must match in name and shape.
    """
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    saved = load_file(init / "model.safetensors")
    own = model.state_dict()
    for name, value in saved.items():
        if "vision_model.embeddings.position_embedding" not in name:
            continue
        target = own[name]
        if value.shape == target.shape:
            continue
        rows, target_rows = value.reshape(-1, value.shape[-1]), target.shape[-2]
        old, new = math.isqrt(rows.shape[0] - 1), math.isqrt(target_rows - 1)
        grid = rows[1:].T.reshape(1, -1, old, old)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        resized = torch.cat([rows[:1], grid.reshape(-1, new * new).T])
        saved[name] = resized.reshape(target.shape)
    missing, unexpected = model.load_state_dict(saved, strict=False)
    # Tied weights (BLIP's decoder shares its word embeddings) are saved once.
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied and not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{init} does not fit this model: missing {missing}, "
                         f"unexpected {unexpected}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def describe_init(init: Path | None) -> dict | None:
    """What a warm start began from: the weights' SHA-256 and how they were trained."""
    if init is None:
        return None
    import hashlib

    weights = (init / "model.safetensors").read_bytes()
    record = {"sha256": hashlib.sha256(weights).hexdigest()}
    history = init / "training.json"
    if history.is_file():
        record["training"] = json.loads(history.read_text())
    return record


def save(model, processor, out: Path, settings: TrainSettings, scores: dict[str, float],
         init: dict | None = None) -> None:
    """Write the Hugging Face folder (safetensors) and how it was made.

    `init` (from `describe_init`, read before `out` may overwrite it) records the weights a
    warm start began from, or those a part of the model was copied from. The record starts
    with the command line that ran.
    """
    import shlex
    import sys

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {"command": shlex.join(["python", *sys.orig_argv[1:]]),
              "settings": asdict(settings), "held_out": scores,
              "torch": __import__("torch").__version__,
              "threads": __import__("torch").get_num_threads()}
    if init is not None:
        record["init"] = init
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


TRAINERS = {
    "shapes-clip": "raysight.builtin.train_clip",
    "shapes-vlm": "raysight.builtin.train_vlm",
}


def _train_one(name: str, args, out: Path, teacher: Path | None = None) -> None:
    """Train model `name` as the command line asks, print its scores and times."""
    import importlib
    import resource

    recipe = importlib.import_module(TRAINERS[name])
    base = recipe.FINETUNE if args.init else recipe.SETTINGS
    settings = replace(base, steps=args.steps or base.steps, seed=args.seed,
                       image_size=args.image_size or base.image_size,
                       eval_every=min(base.eval_every, args.steps or base.steps))
    start_from = f"the weights in {args.init}" if args.init else "random weights"
    print(f"training {name} from {start_from}: {settings}", flush=True)
    started = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    extra = {"teacher": teacher} if name == "shapes-vlm" else {}
    scores = recipe.train(out, settings, init=args.init, **extra)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    held_out = "  ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "wall_seconds")
    print(f"final held-out {held_out}", flush=True)
    print(f"{name}: {settings.steps} steps in {wall:.0f} s wall time, {cpu:.0f} CPU s "
          f"({scores['wall_seconds']:.0f} s in the training loop); saved to {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from raysight.builtin import BUILTIN_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", choices=["all", *sorted(TRAINERS)],
        help="all: shapes-clip, then shapes-vlm with its vision tower from that shapes-clip",
    )
    parser.add_argument("--out", type=Path,
                        help="folder to write (default: the shipped one); with `all`, the "
                        "folder to write shapes-clip/ and shapes-vlm/ into")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the shipped recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init", type=Path,
        help="warm start: continue from the model in this folder with the recipe's shorter "
        "fine-tuning settings (default: train from random weights)",
    )
    parser.add_argument(
        "--teacher", type=Path,
        help="shapes-vlm: the shapes-clip folder its vision tower starts from and is "
        "distilled from (default: the shipped shapes-clip)",
    )
    parser.add_argument("--image-size", type=int,
                        help="input side in pixels (default: the recipe's, 64)")
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch threads (default 2); results are reproducible for one thread count",
    )
    args = parser.parse_args(argv)
    if args.model == "all" and (args.init or args.teacher or args.steps):
        parser.error("`all` trains both models from scratch with their recipes: "
                     "--init, --teacher and --steps apply to one model")

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.model == "all":
        clip_out = args.out / "shapes-clip" if args.out else BUILTIN_MODELS["shapes-clip"]
        vlm_out = args.out / "shapes-vlm" if args.out else BUILTIN_MODELS["shapes-vlm"]
        _train_one("shapes-clip", args, clip_out)
        _train_one("shapes-vlm", args, vlm_out, teacher=clip_out)
        print(f"both models in {time.perf_counter() - started:.0f} s wall time", flush=True)
    else:
        _train_one(args.model, args, args.out or BUILTIN_MODELS[args.model], args.teacher)


if __name__ == "__main__":
    main()
