"""A second, independent renderer of the 12 shape captions, to test that models generalise.

`raysight.shapes` draws with PIL's ImageDraw on 64 px images with soft backgrounds, and the
built-in models are trained from that drawing code. This module shares only the labels
(shapes, colour names, captions) and draws everything else its own way, so a model that
learnt the first renderer's quirks instead of the shapes fails here:

- shapes are rasterised from their geometry in numpy, each pixel covered by a 4x4 grid of
  samples (analytic anti-aliasing, not ImageDraw's hard edges), on canvases of 40 to 160 px;
- sizes run from small to large, at any rotation, anywhere on the canvas including touching
  its edges, shaded across the shape;
- backgrounds are flat tints, linear or radial gradients, noise, checkerboards, stripes or
  cloudy value noise, in colours no shape colour can be mistaken for (low saturation or low
  brightness);
- many images are blurred and most go through a JPEG round trip at quality 20 to 95.

Sets are drawn from seeds no training run uses (training draws from seeds near 0 and
100_003); the same seed gives the same pixels.
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import TYPE_CHECKING

from raysight.shapes import COLORS, SHAPES, ShapeLabel

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# The seed evaluation and tests draw perturbed sets from: far from anything training uses.
PERTURBED_SEED = 31_337_001

_SAMPLES = 4  # sub-pixel samples per axis
BACKGROUNDS = ("flat", "linear", "radial", "checkerboard", "stripes", "clouds")
_CANVASES = (40, 48, 64, 80, 96, 128, 160)
# Hue (degrees), lowest saturation and lowest brightness of each colour's fill.
_FILL = {
    "red": (2.0, 0.7, 0.7),
    "green": (122.0, 0.65, 0.6),
    "blue": (228.0, 0.7, 0.75),
    "yellow": (57.0, 0.75, 0.88),
}


def _fill_rgb(rng: "np.random.Generator", color: str) -> "np.ndarray":
    import numpy as np

    hue, min_saturation, min_value = _FILL[color]
    hue = (hue + rng.uniform(-10.0, 10.0)) % 360.0
    rgb = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(min_saturation, 1.0),
                              rng.uniform(min_value, 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def _dull_rgb(rng: "np.random.Generator") -> "np.ndarray":
    """A background colour: washed out (any brightness) or dark (any hue)."""
    import numpy as np

    hue = rng.uniform(0.0, 1.0)
    if rng.uniform() < 0.6:
        hsv = (hue, rng.uniform(0.0, 0.22), rng.uniform(0.3, 1.0))
    else:
        hsv = (hue, rng.uniform(0.0, 0.7), rng.uniform(0.03, 0.3))
    return np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32) * 255.0


def _background(rng: "np.random.Generator", size: int,
                record: dict | None = None) -> "np.ndarray":
    """One of six kinds of background, float32 HxWx3 in 0..255."""
    import numpy as np

    first, second = _dull_rgb(rng), _dull_rgb(rng)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(grid, grid, indexing="ij")
    kind = int(rng.integers(6))
    if record is not None:
        record["background"] = BACKGROUNDS[kind]
    if kind == 0:  # flat
        weight = np.zeros((size, size), dtype=np.float32)
    elif kind == 1:  # linear gradient
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ramp = math.cos(angle) * (x - 0.5) + math.sin(angle) * (y - 0.5)
        weight = np.clip(ramp * math.sqrt(2.0) + 0.5, 0.0, 1.0)
    elif kind == 2:  # radial gradient
        cx, cy = rng.uniform(0.0, 1.0, size=2)
        weight = np.clip(np.hypot(x - cx, y - cy) / rng.uniform(0.5, 1.2), 0.0, 1.0)
    elif kind == 3:  # checkerboard
        cells = int(rng.integers(3, 12))
        weight = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    elif kind == 4:  # stripes at an angle
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(0.08, 0.3)
        phase = (math.cos(angle) * x + math.sin(angle) * y) / period
        weight = (np.sin(2.0 * math.pi * phase) > 0).astype(np.float32)
    else:  # clouds: a coarse random grid, smoothly enlarged
        from PIL import Image

        coarse = rng.uniform(0.0, 255.0, size=(int(rng.integers(3, 8)),) * 2).astype(np.uint8)
        enlarged = Image.fromarray(coarse, mode="L").resize((size, size), Image.BICUBIC)
        weight = np.asarray(enlarged, dtype=np.float32) / 255.0
    pixels = first + weight[:, :, None] * (second - first)
    noise = rng.uniform(0.0, 14.0) if rng.uniform() < 0.5 else 0.0
    return pixels + rng.normal(0.0, 1.0, size=pixels.shape).astype(np.float32) * noise


def _coverage(shape: str, size: int, cx: float, cy: float, radius: float, angle: float):
    """Fraction of each pixel inside the shape, from _SAMPLES x _SAMPLES points per pixel."""
    import numpy as np

    fine = size * _SAMPLES
    points = (np.arange(fine, dtype=np.float32) + 0.5) / _SAMPLES
    y, x = np.meshgrid(points, points, indexing="ij")
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    else:
        corners = 4 if shape == "square" else 3
        # A regular polygon is where every edge's inward half-plane holds: each edge sits at
        # distance radius * cos(pi / corners) from the centre, facing outwards at its angle.
        apothem = radius * math.cos(math.pi / corners)
        inside = np.ones_like(x, dtype=bool)
        for k in range(corners):
            normal = angle + math.pi / corners + 2.0 * math.pi * k / corners
            reach = (x - cx) * math.cos(normal) + (y - cy) * math.sin(normal)
            inside &= reach <= apothem
    return inside.reshape(size, _SAMPLES, size, _SAMPLES).mean(axis=(1, 3), dtype=np.float32)


def draw_perturbed(
    rng: "np.random.Generator", *, shape: str | None = None, color: str | None = None,
    record: dict | None = None,
) -> tuple["Image.Image", ShapeLabel]:
    """Draw one shape the second renderer's way; everything comes from `rng`.

    `record`, if given, receives how the image was drawn (canvas, radius share, background
    kind, blur, JPEG quality) for per-bucket scores; it draws nothing extra from `rng`.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    label = ShapeLabel(shape or SHAPES[int(rng.integers(len(SHAPES)))],
                       color or COLORS[int(rng.integers(len(COLORS)))])
    size = int(rng.choice(_CANVASES))
    # Radius of the circle through the corners, as a share of the canvas: small to large.
    # A triangle fills less of that circle, so it gets a little more.
    radius = rng.uniform(0.14, 0.42) * size * (1.15 if label.shape == "triangle" else 1.0)
    cx, cy = rng.uniform(radius, size - radius, size=2)  # may touch the canvas's edges
    angle = rng.uniform(0.0, 2.0 * math.pi)
    alpha = _coverage(label.shape, size, cx, cy, radius, angle)[:, :, None]
    # Light falls across the shape: up to 15% darker on one side.
    tilt = rng.uniform(0.0, 2.0 * math.pi)
    grid = np.arange(size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    side = ((x - cx) * math.cos(tilt) + (y - cy) * math.sin(tilt)) / (2.0 * radius) + 0.5
    shade = 1.0 - rng.uniform(0.0, 0.15) * np.clip(side, 0.0, 1.0)
    fill = _fill_rgb(rng, label.color)[None, None, :] * shade[:, :, None]
    pixels = _background(rng, size, record) * (1.0 - alpha) + fill * alpha
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")
    blurred = rng.uniform() < 0.4
    if blurred:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * size / 64))
    quality = int(rng.integers(20, 96)) if rng.uniform() < 0.75 else None
    if record is not None:
        record.update(canvas=size, radius=radius / size, blurred=blurred, jpeg=quality)
    if quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image, label


def make_perturbed(n: int, seed: int = PERTURBED_SEED) -> list[tuple["Image.Image", ShapeLabel]]:
    """`n` images of the second renderer with their labels; the same seed, the same list."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [draw_perturbed(rng) for _ in range(n)]
