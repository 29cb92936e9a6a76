"""Image bytes to a checked RGB image: format, size and pixel limits, and memory care.

Every encoded image raysight accepts (an upload, a file, a fetched URL) is decoded here, within
the limits of ``ImageInputPolicy``: the header is read and its pixels counted before any pixel
is decoded, a large image is reduced toward what the model's processor keeps while it is
decoded (``working_size``), and the heap a big decode freed goes back to the OS. Where the
bytes come from (base64, data URLs, paths, URLs) is ``raysight.images``.
"""

from __future__ import annotations

import contextvars
import io
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from raysight.errors import CorruptImage, EmptyImage, ImageError, ImageTooLarge, NotAnImage
from raysight.spec import ImageInputPolicy

if TYPE_CHECKING:
    from PIL import Image

# Formats decoded. Others PIL knows (EPS runs Ghostscript, PSD, ...) are refused on purpose.
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


@dataclass(frozen=True)
class WorkingSize:
    """The least a model's processor keeps of an image: each side at least `min_side` pixels
    and at least `min_pixels` pixels in all. An image well above it is reduced by a whole
    factor (box filter) right after decoding, so a 36-megapixel upload never reaches the
    processor, its numpy copies and its float arrays at full size; the processor still
    resizes from at least twice its own output size (see `working_size_for`)."""

    min_side: int = 0
    min_pixels: int = 0

    def factor(self, size: tuple[int, int]) -> int:
        """The largest whole factor that keeps `size` at or above this working size."""
        width, height = size
        by_side = min(width, height) // self.min_side if self.min_side else 1 << 30
        by_pixels = (math.isqrt(width * height // self.min_pixels) if self.min_pixels
                     else 1 << 30)
        factor = min(by_side, by_pixels)
        return factor if factor < 1 << 30 else 1


_working: contextvars.ContextVar[WorkingSize | None] = contextvars.ContextVar(
    "raysight_image_working_size", default=None)


@contextmanager
def working_size(size: WorkingSize | None) -> Iterator[None]:
    """Images decoded inside the block are reduced toward `size` (None: left as they are)."""
    token = _working.set(size)
    try:
        yield
    finally:
        _working.reset(token)


def working_size_for(processor: Any) -> WorkingSize | None:
    """What a Hugging Face processor keeps of an image, doubled for margin; None when it is
    not known (the image then reaches the processor as decoded).

    Fixed-size processors (BLIP: height x width) and shortest-edge ones (CLIP) keep a few
    hundred pixels a side; pixel-budget ones (Qwen2-VL: max_pixels, or its size's
    longest_edge, which counts pixels there) keep up to their budget.
    """
    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    budget = _positive(getattr(image_processor, "max_pixels", None))
    if budget is None and "qwen" in type(image_processor).__name__.lower():
        budget = _positive(_size_field(size, "longest_edge"))
    if budget is not None:
        return WorkingSize(min_pixels=2 * budget)
    sides = [_positive(_size_field(size, key)) for key in ("height", "width", "shortest_edge")]
    crop = getattr(image_processor, "crop_size", None)
    sides += [_positive(_size_field(crop, key)) for key in ("height", "width")]
    sides = [side for side in sides if side is not None]
    return WorkingSize(min_side=2 * max(sides)) if sides else None


def _size_field(size: Any, key: str) -> Any:
    # A plain dict in older transformers, a SizeDict (attributes) in 5.x.
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def decode_image_bytes(data: bytes, policy: ImageInputPolicy) -> Image.Image:
    """Decode encoded image bytes into a fully loaded RGB image within the policy's limits.

    Inside `working_size(...)` a large image is reduced as it is decoded (JPEG: at 1/2, 1/4
    or 1/8 scale by the decoder itself) and before any mode conversion, so that at most one
    full-size copy ever exists, and it is freed before this returns."""
    if not data:
        raise EmptyImage("the image data is empty (0 bytes)")
    check_byte_count(len(data), policy, "the image")
    image = _open_header(bytes(data))
    _check_pixel_count(image.size, policy)
    target = _target_size(image.size, policy)
    if target != image.size and image.format in ("JPEG", "MPO"):
        # JPEG decodes straight at 1/2, 1/4 or 1/8 scale; draft never goes below the target.
        image.draft(image.mode, target)
    _load_fully(image)
    decoded_bytes = image.width * image.height * len(image.getbands())
    result = _normalise(image, policy)
    del image  # the full-size pixels go now, before the trim below
    if decoded_bytes >= _TRIM_AFTER_BYTES:
        release_freed_memory()
    return result


def _target_size(size: tuple[int, int], policy: ImageInputPolicy) -> tuple[int, int]:
    """The smallest size this image may be reduced to: the policy's resize_max_side, and no
    further than the working size of the model decoding it."""
    width, height = size
    factor = 1
    working = _working.get()
    if working is not None:
        factor = working.factor(size)
    if policy.resize_max_side and max(width, height) > policy.resize_max_side:
        scale = policy.resize_max_side / max(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if factor <= 1 or width // factor < target[0]:
            return target
    return (max(1, width // factor), max(1, height // factor)) if factor > 1 else size


def _open_header(data: bytes) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    # raysight checks width x height against the policy right after this header-only open.
    # PIL's process-wide bomb check would otherwise fire first, at its own limit and with
    # its own message, so it is switched off: the policy's limit is the one that counts.
    Image.MAX_IMAGE_PIXELS = None
    Image.init()
    formats = [fmt for fmt in _ACCEPTED_FORMATS if fmt in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise NotAnImage(f"the data is not an image in a supported format ("
                         f"{', '.join(_ACCEPTED_FORMATS)}); it starts with {data[:12]!r}") from None
    except Exception as exc:  # a plugin choking on a malformed header
        raise CorruptImage(f"the image header is truncated or damaged: {exc}") from None


def _load_fully(image: Image.Image) -> None:
    # Decoders raise many types on bad input (OSError, SyntaxError, struct.error, ...); all of
    # them mean the same thing here. LOAD_TRUNCATED_IMAGES is left as PIL ships it (False).
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as exc:
        message = f"the image cannot be decoded; it is truncated or damaged ({exc})"
        raise CorruptImage(message) from None


def _normalise(image: Image.Image, policy: ImageInputPolicy) -> Image.Image:
    from PIL import ImageOps

    image = _reduce(image, policy)
    try:
        if image.getexif().get(_ORIENTATION, 1) != 1:  # else exif_transpose returns a copy
            image = ImageOps.exif_transpose(image)
    except Exception:
        pass  # damaged EXIF must not cost a readable picture: keep it as stored
    return _downscale(_to_rgb(image), policy.resize_max_side)


def _reduce(image: Image.Image, policy: ImageInputPolicy) -> Image.Image:
    """Reduce by a whole factor toward the target size, in the image's own mode (before an
    RGB or RGBA conversion multiplies its bytes); the full-size image is dropped at once."""
    factor = min(image.width // max(1, target[0]), image.height // max(1, target[1])) \
        if (target := _target_size(image.size, policy)) != image.size else 1
    if factor < 2:
        return image
    if image.mode in ("P", "1"):  # no reduce() for a palette or 1-bit image
        image = image.convert("RGBA" if "transparency" in image.info else "RGB"
                              if image.mode == "P" else "L")
    info = image.info
    reduced = image.reduce(factor)
    reduced.info.update(info)  # keeps transparency and the EXIF orientation
    return reduced


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim).

    PIL allocates a large image in 16 MB blocks; glibc serves blocks that size from its heap
    once it has seen a larger one freed, and keeps them after they are freed, so one
    36-megapixel image would leave a replica hundreds of MB larger for good."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False  # not glibc: nothing to do
    if _malloc_trim:
        _malloc_trim(0)


_ORIENTATION = 0x0112
_TRIM_AFTER_BYTES = 32 * 1024 * 1024
_malloc_trim: Any = None


def _to_rgb(image: Image.Image) -> Image.Image:
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # convert("RGB") would clip deep gray to white: map 0..65535 (float: 0..1) onto 0..255.
        scale = 255.0 if image.mode == "F" and image.getextrema()[1] <= 1.0 else 1 / 257
        image = image.convert("F").point(lambda value: value * scale).convert("L")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise NotAnImage(f"images of mode {image.mode} cannot be converted to RGB: {exc}") from None


def _downscale(image: Image.Image, max_side: int | None) -> Image.Image:
    from PIL import Image

    width, height = image.size
    if not max_side or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def check_byte_count(count: int, policy: ImageInputPolicy, what: str) -> None:
    if count > policy.max_image_bytes:
        raise ImageTooLarge(f"{what} is {count:,} bytes; the limit is "
                            f"{policy.max_image_bytes:,} bytes (images.max_image_bytes)")


def _check_pixel_count(size: tuple[int, int], policy: ImageInputPolicy) -> None:
    width, height = size
    if width * height > policy.max_image_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} = {width * height:,} pixels; the limit "
                            f"is {policy.max_image_pixels:,} pixels (images.max_image_pixels)")


def decode_from(label: str, data: bytes, policy: ImageInputPolicy) -> Image.Image:
    """Decode bytes read from a path or URL, naming that source in any error."""
    try:
        return decode_image_bytes(data, policy)
    except ImageError as exc:
        raise type(exc)(f"{label}: {exc.message}") from None


def decode_loaded_image(image: Image.Image, policy: ImageInputPolicy) -> Image.Image:
    """An image already opened by the caller (a PIL image), checked and normalised as decoded
    bytes would be: its pixel count, a full load, the reduction, orientation and RGB."""
    _check_pixel_count(image.size, policy)
    _load_fully(image)
    return _normalise(image, policy)
