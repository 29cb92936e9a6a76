"""The synthetic shapes: deterministic, labelled truthfully, written to disk as documented."""

from __future__ import annotations

import colorsys
import csv

import numpy as np
import pytest
from PIL import Image

from raysight.shapes import (
    ALL_CAPTIONS,
    COLORS,
    QUESTIONS,
    SHAPES,
    ShapeLabel,
    caption_for,
    draw_shape,
    make_shapes,
    write_shapes_folder,
)

HUES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 230.0}


def shape_mask(image: Image.Image) -> np.ndarray:
    """Pixels that are saturated and bright: the shape, never the background."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    return (hsv[:, :, 1] > 0.5) & (hsv[:, :, 2] > 0.55)


def nearest_colour(image: Image.Image, mask: np.ndarray) -> str:
    r, g, b = np.asarray(image, dtype=np.float32)[mask].mean(axis=0) / 255.0
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360.0

    def distance(name: str) -> float:
        gap = abs(hue - HUES[name]) % 360.0
        return min(gap, 360.0 - gap)

    return min(COLORS, key=distance)


def nearest_shape(mask: np.ndarray) -> str:
    """Area over squared reach from the centroid: circle ~3.1, square ~2.0, triangle ~1.3."""
    ys, xs = np.nonzero(mask)
    reach = np.sqrt((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max() + 0.5
    ratio = len(xs) / reach**2
    if ratio > 2.6:
        return "circle"
    return "square" if ratio > 1.65 else "triangle"


def test_captions_and_questions():
    assert caption_for("circle", "red") == "a red circle"
    assert len(ALL_CAPTIONS) == len(set(ALL_CAPTIONS)) == len(SHAPES) * len(COLORS) == 12
    assert ShapeLabel("triangle", "blue").caption == "a blue triangle"
    assert QUESTIONS == {"shape": "What shape is this?", "color": "What color is the shape?"}
    with pytest.raises(ValueError, match="purple"):
        caption_for("circle", "purple")


def test_same_seed_same_images_other_seed_other_images():
    first, again, other = make_shapes(20, seed=3), make_shapes(20, seed=3), make_shapes(20, seed=4)
    assert [label for _, label in first] == [label for _, label in again]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(first, again))
    assert any(a.tobytes() != b.tobytes() for (a, _), (b, _) in zip(first, other))
    assert first[0][0].size == (64, 64) and first[0][0].mode == "RGB"


def test_every_caption_appears():
    captions = {label.caption for _, label in make_shapes(300, seed=0)}
    assert captions == set(ALL_CAPTIONS)


def test_drawn_colour_and_shape_match_the_label():
    for image, label in make_shapes(240, seed=11):
        mask = shape_mask(image)
        assert mask.sum() > 80, label
        assert nearest_colour(image, mask) == label.color
        assert nearest_shape(mask) == label.shape


def test_requested_shape_and_colour_are_drawn():
    rng = np.random.default_rng(0)
    image, label = draw_shape(rng, size=96, shape="square", color="yellow")
    assert label == ShapeLabel("square", "yellow") and image.size == (96, 96)
    mask = shape_mask(image)
    assert nearest_colour(image, mask) == "yellow" and nearest_shape(mask) == "square"


def test_background_stays_clear_of_shape_colours():
    for image, _ in make_shapes(100, seed=5):
        mask = shape_mask(image)
        # Corners are never covered by the shape, so they are pure background.
        corners = np.zeros_like(mask)
        corners[:3, :3] = corners[:3, -3:] = corners[-3:, :3] = corners[-3:, -3:] = True
        assert not (mask & corners).any()


def test_folder_layout_and_labels(tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", n=12, seed=7)
    with open(folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "shape", "color", "caption", "corrupt"]
    assert [row["path"] for row in rows] == [f"img_{i:05d}.png" for i in range(12)]
    expected = make_shapes(12, seed=7)
    for row, (image, label) in zip(rows, expected):
        assert (row["shape"], row["color"]) == (label.shape, label.color)
        assert row["caption"] == label.caption
        assert row["corrupt"] == "false"
        with Image.open(folder / row["path"]) as written:
            assert written.format == "PNG"
            assert written.convert("RGB").tobytes() == image.tobytes()
    written_files = sorted(p.name for p in folder.iterdir())
    assert written_files == sorted([row["path"] for row in rows] + ["labels.csv"])


def test_corrupt_files_are_listed_and_do_not_decode(tmp_path):
    folder = write_shapes_folder(tmp_path, n=5, seed=1, corrupt=3)
    with open(folder / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    broken = [row for row in rows if row["corrupt"] == "true"]
    assert len(rows) == 8 and len(broken) == 3
    assert all(row["path"].endswith(".png") and row["caption"] == "" for row in broken)
    sizes = set()
    for row in broken:
        path = folder / row["path"]
        sizes.add(path.stat().st_size == 0)
        with pytest.raises(OSError):
            with Image.open(path) as image:
                image.load()
    assert sizes == {True, False}  # one empty file, others with (bad) content


def test_jpeg_folder(tmp_path):
    folder = write_shapes_folder(tmp_path, n=3, seed=2, fmt="jpg")
    names = sorted(p.name for p in folder.glob("img_*"))
    assert names == ["img_00000.jpg", "img_00001.jpg", "img_00002.jpg"]
    with Image.open(folder / names[0]) as image:
        assert image.format == "JPEG"
    with pytest.raises(ValueError, match="fmt"):
        write_shapes_folder(tmp_path, n=1, seed=0, fmt="gif")


def test_two_thousand_images_are_quick(tmp_path):
    import time

    start = time.perf_counter()
    write_shapes_folder(tmp_path, n=2000, seed=0)
    # Generous bound: a busy shared machine is several times slower than an idle one.
    assert time.perf_counter() - start < 30
    assert len(list(tmp_path.glob("img_*.png"))) == 2000
