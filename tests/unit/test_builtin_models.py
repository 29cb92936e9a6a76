"""The shipped built-in models answer correctly through raysight's own batched engines, on
shapes drawn from seeds that training never used: by the renderer they learnt from
(`raysight.shapes`) and by an independent one they never saw (`raysight.shapes_perturbed`:
other sizes, places, anti-aliasing, backgrounds, blur and JPEG compression)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from raysight.builtin.train_vlm import answer_for, prompts
from raysight.engines import build_engine
from raysight.engines.embed import EmbedRequest
from raysight.engines.generate import GenerateRequest
from raysight.shapes import ALL_CAPTIONS, make_shapes
from raysight.shapes_perturbed import PERTURBED_SEED, make_perturbed
from raysight.spec import ModelSpec

# Training draws from seed 0 (and a fixed offset for its held-out set); this one is new.
UNSEEN_SEED = 20261125
BATCH = 32


def in_batches(engine, requests):
    results = []
    for start in range(0, len(requests), BATCH):
        results.extend(engine.run(requests[start:start + BATCH]))
    return results


@pytest.fixture(scope="module")
def clip_engine():
    return build_engine(ModelSpec(model="builtin:shapes-clip", task="embed"))


@pytest.fixture(scope="module")
def vlm_engine():
    return build_engine(ModelSpec(model="builtin:shapes-vlm"))


def test_shapes_clip_zero_shot_and_retrieval(clip_engine):
    drawn = make_shapes(600, UNSEEN_SEED)
    truth = np.array([ALL_CAPTIONS.index(label.caption) for _, label in drawn])
    assert set(truth) == set(range(len(ALL_CAPTIONS))), "the gallery must hold every caption"

    images = in_batches(clip_engine, [EmbedRequest(image=image) for image, _ in drawn])
    texts = clip_engine.run([EmbedRequest(text=caption) for caption in ALL_CAPTIONS])
    image_vectors = np.stack([item.vector for item in images])
    text_vectors = np.stack([item.vector for item in texts])
    similarity = image_vectors @ text_vectors.T

    zero_shot = float((similarity.argmax(axis=1) == truth).mean())
    top1 = float((truth[similarity.argmax(axis=0)] == np.arange(len(ALL_CAPTIONS))).mean())
    print(f"\nshapes-clip on {len(drawn)} unseen images: zero-shot {zero_shot:.3f}, "
          f"text->image top-1 {top1:.3f}")
    assert zero_shot >= 0.95
    assert top1 >= 0.95


def test_shapes_clip_classify_matches_zero_shot(clip_engine):
    drawn = make_shapes(48, UNSEEN_SEED + 1)
    labels = list(ALL_CAPTIONS)
    results = in_batches(clip_engine, [EmbedRequest(image=image, labels=labels)
                                       for image, _ in drawn])
    hits = sum(result.label == label.caption for result, (_, label) in zip(results, drawn))
    assert all(abs(sum(result.probs) - 1.0) < 1e-4 for result in results)
    assert hits / len(drawn) >= 0.9


def test_shapes_clip_classifies_the_perturbed_renderer(clip_engine):
    drawn = make_perturbed(400, PERTURBED_SEED + 1)
    results = in_batches(clip_engine, [EmbedRequest(image=image, labels=list(ALL_CAPTIONS))
                                       for image, _ in drawn])
    right = sum(result.label == label.caption for result, (_, label) in zip(results, drawn))
    print(f"\nshapes-clip classify on {len(drawn)} perturbed images: {right / len(drawn):.3f} "
          f"({right} right)")
    assert right / len(drawn) >= 0.95


def test_shapes_vlm_captions_the_perturbed_renderer(vlm_engine):
    drawn = make_perturbed(300, PERTURBED_SEED + 2)
    requests = [GenerateRequest.from_prompt(None, image, max_new_tokens=12) for image, _ in drawn]
    results = in_batches(vlm_engine, requests)
    right = sum(result.text.strip() == label.caption for result, (_, label) in zip(results, drawn))
    print(f"\nshapes-vlm captions on {len(drawn)} perturbed images: {right / len(drawn):.3f} "
          f"({right} right)")
    # Issue #16 asks for 0.95 (the captioner before its vision tower came from shapes-clip
    # reached 0.893 here).
    assert right / len(drawn) >= 0.95


def test_shapes_vlm_captions_and_answers(vlm_engine):
    drawn = make_shapes(300, UNSEEN_SEED + 2)
    scores = {}
    for task, prompt in prompts().items():
        requests = [GenerateRequest.from_prompt(prompt or None, image, max_new_tokens=12)
                    for image, _ in drawn]
        results = in_batches(vlm_engine, requests)
        hits = sum(result.text.strip() == answer_for(task, label)
                   for result, (_, label) in zip(results, drawn))
        scores[task] = hits / len(drawn)
    print(f"\nshapes-vlm exact match on {len(drawn)} unseen images: "
          + ", ".join(f"{task} {score:.3f}" for task, score in scores.items()))
    assert scores["caption"] >= 0.90
    assert scores["describe"] >= 0.90
    assert scores["shape"] >= 0.90
    assert scores["color"] >= 0.90


@pytest.mark.parametrize("index", range(4))
def test_raysight_ask_prints_the_colour(tmp_path, index):
    image, label = make_shapes(4, UNSEEN_SEED + 3)[index]
    path = tmp_path / "X.png"
    image.save(path)
    done = subprocess.run(
        [sys.executable, "-m", "raysight.cli", "ask", "--model", "builtin:shapes-vlm",
         "--image", str(path), "--prompt", "What color is the shape?"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == label.color
