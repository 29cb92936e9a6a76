"""The second renderer (evaluation) and the varied training drawings: deterministic, labelled
right, and as varied as they claim."""

from __future__ import annotations

import colorsys

import numpy as np

from raysight.builtin.augment import draw_augmented
from raysight.shapes import ALL_CAPTIONS, COLORS
from raysight.shapes_perturbed import BACKGROUNDS, PERTURBED_SEED, draw_perturbed, make_perturbed


def _pixels(image) -> bytes:
    return np.asarray(image).tobytes()


def test_the_same_seed_draws_the_same_pixels():
    first = make_perturbed(20, seed=5)
    again = make_perturbed(20, seed=5)
    other = make_perturbed(20, seed=6)
    assert [_pixels(a) for a, _ in first] == [_pixels(b) for b, _ in again]
    assert [label for _, label in first] == [label for _, label in again]
    assert [_pixels(a) for a, _ in first] != [_pixels(b) for b, _ in other]


def test_recording_how_an_image_was_drawn_changes_nothing_drawn():
    # Per-bucket scores (`python -m raysight.builtin.evaluate --buckets`) rely on this.
    plain, recorded = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(30):
        record: dict = {}
        image, label = draw_perturbed(plain)
        same, same_label = draw_perturbed(recorded, record=record)
        assert (_pixels(image), label) == (_pixels(same), same_label)
        assert record["canvas"] == image.size[0]
        assert 0.14 <= record["radius"] <= 0.42 * 1.15
        assert record["jpeg"] is None or 20 <= record["jpeg"] <= 95
        assert record["background"] in BACKGROUNDS and isinstance(record["blurred"], bool)


def test_the_perturbed_set_varies_canvas_size_and_covers_every_caption():
    drawn = make_perturbed(150, PERTURBED_SEED)
    sizes = {image.size for image, _ in drawn}
    assert all(width == height for width, height in sizes)
    assert min(sizes)[0] <= 48 and max(sizes)[0] >= 128, sizes
    assert {label.caption for _, label in drawn} == set(ALL_CAPTIONS)


def _hue_of_brightest_saturated(image) -> float:
    """The mean hue of the most saturated, brightest pixels: the shape's (backgrounds are dull)."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in np.asarray(image).reshape(-1, 3)])
    score = hsv[:, 1] * hsv[:, 2]
    top = hsv[score >= np.quantile(score, 0.97)]
    angles = top[:, 0] * 2 * np.pi
    return float(np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)


def test_the_shape_colour_names_hold_on_both_drawings():
    # The most saturated 3% of the pixels (the smallest shape covers 4%) are the shape's, and
    # their hue is the one its colour name says: no background competes with the shape.
    expected = {"red": 0.0, "green": 120.0, "blue": 229.0, "yellow": 57.0}
    rng = np.random.default_rng(77)
    for draw in (draw_perturbed, draw_augmented):
        for color in COLORS:
            for _ in range(5):
                if draw is draw_perturbed:
                    image, label = draw(rng, shape="square", color=color)
                else:
                    image, label = draw(rng)
                    if label.color != color:
                        continue
                hue = _hue_of_brightest_saturated(image)
                gap = min(abs(hue - expected[label.color]), 360 - abs(hue - expected[label.color]))
                assert gap < 25, (draw.__name__, label, hue)


def test_training_drawings_are_deterministic_and_varied():
    first = np.random.default_rng(3)
    again = np.random.default_rng(3)
    drawn = [draw_augmented(first) for _ in range(60)]
    assert [_pixels(a) for a, _ in drawn] == [_pixels(draw_augmented(again)[0]) for _ in range(60)]
    sizes = {image.size[0] for image, _ in drawn}
    assert len(sizes) > 10 and 64 in sizes  # the original renderer's 64 px among many others
