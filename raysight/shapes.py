"""A synthetic image set raysight draws itself: one coloured shape on a plain background.

The built-in models are trained on it and the tests check their answers against it, so it
must be deterministic (same seed, same pixels) and unambiguous: shapes come in four
saturated, bright hues and backgrounds are greys, pastels or dark tones that never look
like any of them.
"""

from __future__ import annotations

import colorsys
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

# Hue of each colour in degrees, and the range its brightness is drawn from: a dim yellow
# reads as olive, so yellow stays bright.
_HUES = {"red": 0.0, "green": 120.0, "blue": 230.0, "yellow": 58.0}
_MIN_VALUE = {"red": 0.75, "green": 0.65, "blue": 0.8, "yellow": 0.9}

QUESTIONS: dict[str, str] = {
    "shape": "What shape is this?",
    "color": "What color is the shape?",
}

LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("path", "shape", "color", "caption", "corrupt")


def caption_for(shape: str, color: str) -> str:
    """The caption of one shape in one colour, e.g. ``"a red circle"``."""
    if shape not in SHAPES or color not in COLORS:
        raise ValueError(
            f"unknown shape/colour {shape!r}/{color!r}; shapes: {SHAPES}, colours: {COLORS}"
        )
    return f"a {color} {shape}"


ALL_CAPTIONS: tuple[str, ...] = tuple(caption_for(s, c) for c in COLORS for s in SHAPES)


@dataclass(frozen=True)
class ShapeLabel:
    """What one image shows; the caption is derived from shape and colour."""

    shape: str
    color: str
    caption: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "caption", caption_for(self.shape, self.color))


def _pick(rng: "np.random.Generator", options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _shape_rgb(rng: "np.random.Generator", color: str) -> tuple[int, int, int]:
    hue = (_HUES[color] + rng.uniform(-8.0, 8.0)) % 360.0
    saturation = rng.uniform(0.75, 1.0)
    value = rng.uniform(_MIN_VALUE[color], 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _background_rgb(rng: "np.random.Generator") -> tuple[float, float, float]:
    """A grey, a pastel or a dark tone: low saturation or low brightness, never a shape hue."""
    kind = int(rng.integers(3))
    hue = rng.uniform(0.0, 1.0)
    if kind == 0:  # grey
        hsv = (hue, rng.uniform(0.0, 0.08), rng.uniform(0.35, 0.92))
    elif kind == 1:  # pastel
        hsv = (hue, rng.uniform(0.08, 0.25), rng.uniform(0.85, 1.0))
    else:  # dark
        hsv = (hue, rng.uniform(0.0, 0.6), rng.uniform(0.04, 0.28))
    return tuple(channel * 255.0 for channel in colorsys.hsv_to_rgb(*hsv))


def _background(rng: "np.random.Generator", size: int) -> "np.ndarray":
    """A plain colour with a soft linear gradient and light noise, as uint8 HxWx3."""
    import numpy as np

    base = np.array(_background_rgb(rng), dtype=np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    strength = rng.uniform(0.0, 18.0)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    noise = rng.normal(0.0, 3.0, size=(size, size, 3)).astype(np.float32)
    pixels = base + strength * gradient[:, :, None] + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _vertices(shape: str, cx: float, cy: float, radius: float, angle: float) -> list:
    corners = 4 if shape == "square" else 3
    turns = [angle + 2.0 * math.pi * k / corners for k in range(corners)]
    return [(cx + radius * math.cos(t), cy + radius * math.sin(t)) for t in turns]


def draw_shape(
    rng: "np.random.Generator",
    size: int = 64,
    *,
    shape: str | None = None,
    color: str | None = None,
) -> tuple["Image.Image", ShapeLabel]:
    """Draw one random shape (or the given shape/colour) on a random background.

    The shape's size, position, rotation and shade are jittered; everything comes from `rng`,
    so the same generator state gives the same image.
    """
    from PIL import Image, ImageDraw

    label = ShapeLabel(shape or _pick(rng, SHAPES), color or _pick(rng, COLORS))
    fill = _shape_rgb(rng, label.color)
    # Radius of the circle through the corners; a triangle covers less of that circle than
    # a square or a circle, so it is drawn a little larger.
    radius = rng.uniform(0.19, 0.33) * size * (1.15 if label.shape == "triangle" else 1.0)
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    image = Image.fromarray(_background(rng, size), mode="RGB")
    draw = ImageDraw.Draw(image)
    if label.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_vertices(label.shape, cx, cy, radius, angle), fill=fill)
    return image, label


def make_shapes(n: int, seed: int, size: int = 64) -> list[tuple["Image.Image", ShapeLabel]]:
    """`n` random images with their labels; the same `seed` gives the same list."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [draw_shape(rng, size) for _ in range(n)]


def _corrupt_bytes(kind: int, valid_png: bytes) -> bytes:
    """Three ways a file can pretend to be an image: truncated, not an image, empty."""
    if kind == 0:
        return valid_png[: len(valid_png) // 2]
    if kind == 1:
        return b"this is a text file, not an image\n"
    return b""


def write_shapes_folder(
    folder: str | Path, n: int, seed: int, corrupt: int = 0, fmt: str = "png", size: int = 64
) -> Path:
    """Write `n` images (``img_00000.png`` ...), `corrupt` broken files and ``labels.csv``.

    ``labels.csv`` has one row per file: its name relative to `folder`, shape, colour,
    caption (empty for corrupt files) and ``corrupt`` (``true``/``false``).
    """
    fmt = fmt.lower().lstrip(".")
    pil_format = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}.get(fmt)
    if pil_format is None:
        raise ValueError(f"fmt must be 'png', 'jpg' or 'jpeg', not {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (image, label) in enumerate(make_shapes(n, seed, size)):
        name = f"img_{index:05d}.{fmt}"
        image.save(folder / name, format=pil_format)
        rows.append((name, label.shape, label.color, label.caption, "false"))
    if corrupt:
        buffer = io.BytesIO()
        make_shapes(1, seed + 1, size)[0][0].save(buffer, format=pil_format)
        for index in range(corrupt):
            name = f"corrupt_{index:05d}.{fmt}"
            (folder / name).write_bytes(_corrupt_bytes(index % 3, buffer.getvalue()))
            rows.append((name, "", "", "", "true"))
    with open(folder / LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return folder
