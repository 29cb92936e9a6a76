"""Score the built-in models with plain transformers: ``python -m raysight.builtin.evaluate``.

Images come from a seed training never uses, drawn either by the renderer the models learn
from (``--set original``) or by the independent one of `raysight.shapes_perturbed`
(``--set perturbed``), and each model is loaded from its folder exactly as a user would
(Auto classes, local files only), so the numbers are what raysight's engines should
reproduce.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EVAL_SEED = 999
SETS = ("original", "perturbed")


def draw_set(name: str, n: int, seed: int, records: list | None = None) -> list:
    """`n` labelled images of set `name` ("original" or "perturbed") from `seed`.

    For the perturbed set, `records` (if given) receives how each image was drawn.
    """
    if name == "original":
        from raysight.shapes import make_shapes

        return make_shapes(n, seed)
    if name == "perturbed":
        import numpy as np

        from raysight.shapes_perturbed import draw_perturbed

        rng = np.random.default_rng(seed)
        drawn = []
        for _ in range(n):
            record: dict = {}
            drawn.append(draw_perturbed(rng, record=record))
            if records is not None:
                records.append(record)
        return drawn
    raise ValueError(f"unknown image set {name!r}; choose from {SETS}")


# How a perturbed image was drawn -> the bucket its score is counted in.
BUCKETS = {
    "canvas px": lambda record, label: record["canvas"],
    "radius/canvas": lambda record, label: f"{min(0.40, int(record['radius'] * 20) / 20):.2f}",
    "jpeg quality": lambda record, label: ("none" if record["jpeg"] is None
                                           else f"{record['jpeg'] // 20 * 20}-"),
    "background": lambda record, label: record["background"],
    "blurred": lambda record, label: record["blurred"],
    "shape": lambda record, label: label.shape,
}


def print_buckets(hits: list[bool], drawn: list, records: list) -> None:
    """The share right in each bucket of each drawing parameter, as `value: share/count`."""
    for name, bucket in BUCKETS.items():
        keys = [bucket(record, label) for record, (_, label) in zip(records, drawn)]
        shown = []
        for key in sorted(set(keys), key=lambda key: (str(type(key)), key)):
            chosen = [hit for hit, other in zip(hits, keys) if other == key]
            shown.append(f"{key}: {sum(chosen) / len(chosen):.2f}/{len(chosen)}")
        print(f"    {name:14s} " + "  ".join(shown), flush=True)


def _load(folder: Path, auto_model: str):
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, auto_model).from_pretrained(folder, local_files_only=True)
    return model.eval(), processor


def evaluate_clip(folder: Path, drawn: list, hits: list | None = None) -> dict[str, float]:
    """Zero-shot accuracy over the 12 captions, and text->image top-1 over the same images.

    `hits` (if given) receives whether each image's zero-shot caption was right.
    """
    import torch
    import torch.nn.functional as F

    from raysight.shapes import ALL_CAPTIONS

    model, processor = _load(folder, "AutoModel")
    n = len(drawn)
    truth = torch.tensor([ALL_CAPTIONS.index(label.caption) for _, label in drawn])
    missing = set(range(len(ALL_CAPTIONS))) - set(truth.tolist())
    if missing:
        raise ValueError(f"the gallery lacks captions {missing}; draw more than {n} images")
    with torch.no_grad():
        texts = processor(text=list(ALL_CAPTIONS), padding=True, return_tensors="pt")
        text = F.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
        pixels = processor(images=[image for image, _ in drawn], return_tensors="pt")
        image = F.normalize(model.get_image_features(**pixels).pooler_output, dim=-1)
    similarity = image @ text.T
    right = similarity.argmax(dim=1) == truth
    if hits is not None:
        hits.extend(right.tolist())
    zero_shot = right.float().mean().item()
    best_image = similarity.argmax(dim=0)
    retrieval = (truth[best_image] == torch.arange(len(ALL_CAPTIONS))).float().mean().item()
    return {"zero_shot_accuracy": zero_shot, "text_to_image_top1": retrieval}


def evaluate_vlm(folder: Path, drawn: list, hits: list | None = None) -> dict[str, float]:
    """Exact-match rate of each task (caption, "Describe the image.", shape, colour).

    `hits` (if given) receives whether each image's caption (no prompt) was right.
    """
    import torch

    from raysight.builtin.train_vlm import answer_for, generate_answers, prompts

    model, processor = _load(folder, "AutoModelForImageTextToText")
    images = [image for image, _ in drawn]
    scores: dict[str, float] = {}
    with torch.no_grad():
        for task, prompt in prompts().items():
            answers = []
            for start in range(0, len(images), 100):
                answers += generate_answers(model, processor, images[start:start + 100], prompt)
            right = [a == answer_for(task, label) for a, (_, label) in zip(answers, drawn)]
            if task == "caption" and hits is not None:
                hits.extend(right)
            scores[task] = sum(right) / len(drawn)
    return scores


def main(argv: list[str] | None = None) -> None:
    import time

    from raysight.builtin import BUILTIN_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"any of {sorted(BUILTIN_MODELS)} (default: all)")
    parser.add_argument("--clip-folder", type=Path, default=BUILTIN_MODELS["shapes-clip"])
    parser.add_argument("--vlm-folder", type=Path, default=BUILTIN_MODELS["shapes-vlm"])
    parser.add_argument("--set", choices=SETS, default="original", help="which renderer draws")
    parser.add_argument("--seed", type=int, help="default: 999 (original), 31337001 (perturbed)")
    parser.add_argument("-n", type=int, default=600, help="images (default: 600)")
    parser.add_argument(
        "--buckets", action="store_true",
        help="perturbed set: also print the share right per canvas size, shape size, JPEG "
        "quality, background, blur and shape (clip: zero-shot; vlm: caption)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(BUILTIN_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(BUILTIN_MODELS)}")
    from raysight.shapes_perturbed import PERTURBED_SEED

    seed = args.seed if args.seed is not None else {"original": EVAL_SEED}.get(
        args.set, PERTURBED_SEED)
    if args.buckets and args.set != "perturbed":
        parser.error("--buckets needs --set perturbed (only that renderer records its draws)")
    records: list = []
    drawn = draw_set(args.set, args.n, seed, records)
    print(f"{args.n} images of the {args.set} set from seed {seed}", flush=True)
    for name in args.models or sorted(BUILTIN_MODELS):
        start, hits = time.perf_counter(), []
        if name == "shapes-clip":
            scores = evaluate_clip(args.clip_folder, drawn, hits)
        else:
            scores = evaluate_vlm(args.vlm_folder, drawn, hits)
        shown = "  ".join(f"{key} {value:.3f}" for key, value in scores.items())
        print(f"{name}: {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.buckets:
            print_buckets(hits, drawn, records)


if __name__ == "__main__":
    main()
