"""Score the built-in models with plain transformers: ``python -m raysight.builtin.evaluate``.

Images come from a seed training never uses, and each model is loaded from its folder
exactly as a user would (Auto classes, local files only), so the numbers are what raysight's
engines should reproduce.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EVAL_SEED = 999


def _load(folder: Path, auto_model: str):
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, auto_model).from_pretrained(folder, local_files_only=True)
    return model.eval(), processor


def evaluate_clip(folder: Path, n: int = 600, seed: int = EVAL_SEED) -> dict[str, float]:
    """Zero-shot accuracy over the 12 captions, and text->image top-1 over the same images."""
    import torch
    import torch.nn.functional as F

    from raysight.shapes import ALL_CAPTIONS, make_shapes

    model, processor = _load(folder, "AutoModel")
    drawn = make_shapes(n, seed)
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


def answer(model, processor, image, prompt: str) -> str:
    """One greedy answer, exactly as raysight's engine asks a BLIP model."""
    if prompt:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        n_prompt = inputs["input_ids"].shape[1] - 1
    else:
        inputs = processor(images=image, return_tensors="pt")
        n_prompt = 1
    out = model.generate(**inputs, max_new_tokens=12)
    return processor.tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True).strip()


def evaluate_vlm(folder: Path, n: int = 300, seed: int = EVAL_SEED) -> dict[str, float]:
    """Exact-match rate of each task (caption, "Describe the image.", shape, colour)."""
    import torch

    from raysight.builtin.train_vlm import answer_for, prompts
    from raysight.shapes import make_shapes

    model, processor = _load(folder, "AutoModelForImageTextToText")
    drawn = make_shapes(n, seed)
    scores: dict[str, float] = {}
    with torch.no_grad():
        for task, prompt in prompts().items():
            hits = sum(
                answer(model, processor, image, prompt) == answer_for(task, label)
                for image, label in drawn
            )
            scores[task] = hits / n
    return scores


def main(argv: list[str] | None = None) -> None:
    import time

    from raysight.builtin import BUILTIN_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"any of {sorted(BUILTIN_MODELS)} (default: all)")
    parser.add_argument("--clip-folder", type=Path, default=BUILTIN_MODELS["shapes-clip"])
    parser.add_argument("--vlm-folder", type=Path, default=BUILTIN_MODELS["shapes-vlm"])
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(BUILTIN_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(BUILTIN_MODELS)}")
    for name in args.models or sorted(BUILTIN_MODELS):
        start = time.perf_counter()
        if name == "shapes-clip":
            scores = evaluate_clip(args.clip_folder, seed=args.seed)
        else:
            scores = evaluate_vlm(args.vlm_folder, seed=args.seed)
        shown = "  ".join(f"{key} {value:.3f}" for key, value in scores.items())
        print(f"{name}: {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
