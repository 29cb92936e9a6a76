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


def draw_set(name: str, n: int, seed: int) -> list:
    """`n` labelled images of set `name` ("original" or "perturbed") from `seed`."""
    if name == "original":
        from raysight.shapes import make_shapes

        return make_shapes(n, seed)
    if name == "perturbed":
        from raysight.shapes_perturbed import make_perturbed

        return make_perturbed(n, seed)
    raise ValueError(f"unknown image set {name!r}; choose from {SETS}")


def _load(folder: Path, auto_model: str):
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, auto_model).from_pretrained(folder, local_files_only=True)
    return model.eval(), processor


def evaluate_clip(folder: Path, drawn: list) -> dict[str, float]:
    """Zero-shot accuracy over the 12 captions, and text->image top-1 over the same images."""
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
    zero_shot = (similarity.argmax(dim=1) == truth).float().mean().item()
    best_image = similarity.argmax(dim=0)
    retrieval = (truth[best_image] == torch.arange(len(ALL_CAPTIONS))).float().mean().item()
    return {"zero_shot_accuracy": zero_shot, "text_to_image_top1": retrieval}


def evaluate_vlm(folder: Path, drawn: list) -> dict[str, float]:
    """Exact-match rate of each task (caption, "Describe the image.", shape, colour)."""
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
            hits = sum(a == answer_for(task, label) for a, (_, label) in zip(answers, drawn))
            scores[task] = hits / len(drawn)
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
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(BUILTIN_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(BUILTIN_MODELS)}")
    from raysight.shapes_perturbed import PERTURBED_SEED

    seed = args.seed if args.seed is not None else {"original": EVAL_SEED}.get(
        args.set, PERTURBED_SEED)
    drawn = draw_set(args.set, args.n, seed)
    print(f"{args.n} images of the {args.set} set from seed {seed}", flush=True)
    for name in args.models or sorted(BUILTIN_MODELS):
        start = time.perf_counter()
        if name == "shapes-clip":
            scores = evaluate_clip(args.clip_folder, drawn)
        else:
            scores = evaluate_vlm(args.vlm_folder, drawn)
        shown = "  ".join(f"{key} {value:.3f}" for key, value in scores.items())
        print(f"{name}: {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
