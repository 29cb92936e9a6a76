"""Varied training drawings, so the built-in models learn shapes rather than one renderer.

A model trained only on `raysight.shapes.draw_shape` learns its habits: hard ImageDraw edges,
64 px canvases, mid-sized shapes away from the edges, soft plain backgrounds, lossless
pixels. `draw_augmented` keeps the labels and changes everything else at random: canvas size,
shape size and place (up to the edges), anti-aliasing (the shape is drawn 1 to 4 times larger
and scaled down with a random filter), backgrounds (gradients, noise, stripes, clutter of
dull blobs), shading, brightness and contrast, blur, a lower-resolution round trip and JPEG
compression. Colours move only within their names: hue stays within 12 degrees and
saturation and brightness stay high, and backgrounds are dull (low saturation or dark).
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import TYPE_CHECKING

from raysight.shapes import COLORS, SHAPES, ShapeLabel, draw_shape

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Share of training drawings that come from the original renderer unchanged.
ORIGINAL_SHARE = 0.25

_HUES = {"red": 0.0, "green": 120.0, "blue": 230.0, "yellow": 58.0}
_MIN_SATURATION = {"red": 0.65, "green": 0.6, "blue": 0.65, "yellow": 0.7}
_MIN_VALUE = {"red": 0.65, "green": 0.55, "blue": 0.7, "yellow": 0.85}


def _fill(rng: "np.random.Generator", color: str) -> tuple[int, int, int]:
    hue = (_HUES[color] + rng.uniform(-12.0, 12.0)) % 360.0
    rgb = colorsys.hsv_to_rgb(
        hue / 360.0, rng.uniform(_MIN_SATURATION[color], 1.0), rng.uniform(_MIN_VALUE[color], 1.0)
    )
    return tuple(round(channel * 255) for channel in rgb)


def _dull(rng: "np.random.Generator") -> tuple[int, int, int]:
    """A background colour no shape colour can be mistaken for: greyish or dark."""
    hue = rng.uniform(0.0, 1.0)
    if rng.uniform() < 0.6:
        hsv = (hue, rng.uniform(0.0, 0.25), rng.uniform(0.25, 1.0))
    else:
        hsv = (hue, rng.uniform(0.0, 0.75), rng.uniform(0.02, 0.32))
    return tuple(round(channel * 255) for channel in colorsys.hsv_to_rgb(*hsv))


def _ramp(rng: "np.random.Generator", size: int) -> "np.ndarray":
    """0 to 1 across the canvas along a random direction, HxW float32."""
    import numpy as np

    angle = rng.uniform(0.0, 2.0 * math.pi)
    grid = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = math.cos(angle) * grid[None, :] + math.sin(angle) * grid[:, None]
    return ramp / math.sqrt(2.0) + 0.5


def _background(rng: "np.random.Generator", size: int) -> "Image.Image":
    """A dull background: flat, a gradient, stripes or a clutter of blobs, maybe noisy."""
    import numpy as np
    from PIL import Image, ImageDraw

    first, second = np.array(_dull(rng), np.float32), np.array(_dull(rng), np.float32)
    kind = int(rng.integers(4))
    if kind <= 1:  # flat, or a gradient between two dull colours
        ramp = _ramp(rng, size) if kind else np.zeros((size, size), np.float32)
        image = Image.fromarray((first + ramp[:, :, None] * (second - first)).astype(np.uint8))
    else:
        image = Image.new("RGB", (size, size), tuple(int(v) for v in first))
        draw = ImageDraw.Draw(image)
        if kind == 2:  # stripes
            width = rng.uniform(2.0, 10.0) * size / 64
            for at in np.arange(-size, 2 * size, 2 * width):
                draw.line((at, -size, at + size * rng.uniform(-0.5, 0.5), 2 * size),
                          fill=_dull(rng) if rng.uniform() < 0.2 else tuple(int(v) for v in second),
                          width=max(1, round(width)))
        else:  # clutter: dull ellipses and rectangles, behind the shape
            for _ in range(int(rng.integers(2, 9))):
                x, y = rng.uniform(-0.2, 1.0, size=2) * size
                w, h = rng.uniform(0.1, 0.6, size=2) * size
                box = (x, y, x + w, y + h)
                (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)(box, fill=_dull(rng))
    if rng.uniform() < 0.5:
        noisy = np.asarray(image, np.float32) + rng.normal(0.0, rng.uniform(2.0, 16.0),
                                                           (size, size, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image


def _mask(shape: str, size: int, scale: int, cx: float, cy: float, radius: float,
          angle: float) -> "Image.Image":
    """The shape's coverage: drawn `scale` times larger, then reduced with a random filter."""
    from PIL import Image, ImageDraw

    big = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(big)
    x, y, r = cx * scale, cy * scale, radius * scale
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    else:
        corners = 4 if shape == "square" else 3
        turns = [angle + 2.0 * math.pi * k / corners for k in range(corners)]
        draw.polygon([(x + r * math.cos(t), y + r * math.sin(t)) for t in turns], fill=255)
    if scale == 1:
        return big
    return big.resize((size, size), (Image.BOX, Image.BILINEAR, Image.LANCZOS)[scale % 3])


def draw_augmented(rng: "np.random.Generator") -> tuple["Image.Image", ShapeLabel]:
    """One training drawing: the original renderer's (a quarter) or a varied one."""
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    if rng.uniform() < ORIGINAL_SHARE:
        return draw_shape(rng)
    label = ShapeLabel(SHAPES[int(rng.integers(len(SHAPES)))],
                       COLORS[int(rng.integers(len(COLORS)))])
    size = int(rng.integers(32, 161))
    radius = rng.uniform(0.12, 0.45) * size * (1.15 if label.shape == "triangle" else 1.0)
    radius = min(radius, 0.49 * size)
    cx, cy = rng.uniform(0.95 * radius, size - 0.95 * radius, size=2)
    mask = _mask(label.shape, size, int(rng.integers(1, 5)), cx, cy, radius,
                 rng.uniform(0.0, 2.0 * math.pi))
    # Shading: the fill darkens by up to a fifth along a random direction.
    shade = 1.0 - rng.uniform(0.0, 0.2) * _ramp(rng, size)
    fill = Image.fromarray((np.array(_fill(rng, label.color), np.float32)
                            * shade[:, :, None]).astype(np.uint8))
    image = Image.composite(fill, _background(rng, size), mask)
    if rng.uniform() < 0.5:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.1))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.15))
    if rng.uniform() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.5) * size / 64))
    if rng.uniform() < 0.2:  # a lower-resolution copy, enlarged again
        small = max(24, round(size * rng.uniform(0.4, 0.8)))
        image = image.resize((small, small), Image.BILINEAR).resize((size, size), Image.BICUBIC)
    if rng.uniform() < 0.7:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(15, 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image, label
