"""Image input: bytes, base64, data URLs, local paths and http(s) URLs in, RGB images out.

Fetching http(s) URLs safely lives in ``raysight.image_urls``.

Every image raysight accepts, online or offline, comes through here, so the limits in
``ImageInputPolicy`` hold everywhere. A refused image raises a typed ``ImageError`` whose
message says what was wrong, the limit, and the setting (``images.<field>``) that governs it.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import io
import math
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import unquote, urlsplit

from raysight.errors import (CorruptImage, EmptyImage, ImageError, ImageTooLarge, InvalidBase64,
                             InvalidDataURL, LocalPathRefused, NotAnImage, TooManyImages,
                             URLRefused)
from raysight.spec import ImageInputPolicy

if TYPE_CHECKING:
    from PIL import Image

# Formats decoded. Others PIL knows (EPS runs Ghostscript, PSD, ...) are refused on purpose.
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_BASE64_FORBIDDEN = re.compile(r"[^A-Za-z0-9+/=_-]")
_URL_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://")


# --- bytes -------------------------------------------------------------------------------


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


# --- base64 and data URLs ------------------------------------------------------------------


def decode_base64_image(text: str, policy: ImageInputPolicy) -> Image.Image:
    """Decode a base64 image (standard or URL-safe alphabet, line breaks allowed)."""
    _check_text_length(len(text), policy)
    clean = "".join(text.split())
    if not clean:
        raise EmptyImage("the image string is empty; send the image file's bytes base64-encoded")
    body = clean.rstrip("=")
    check_byte_count(len(body) * 3 // 4, policy, "the decoded base64 image")
    data = _decode_base64(clean)
    try:
        return decode_image_bytes(data, policy)
    except NotAnImage as exc:
        # "/etc/passwd" is valid base64 (JPEG's base64 starts with "/9j/" too): say what a
        # path is taken for, as _decode_base64 does for paths outside the alphabet.
        if clean.startswith(_PATH_STARTS):
            raise NotAnImage(f"{exc.message}; a string starting with '/' is read as base64, "
                             f"not as a path: {_LOCAL_FILE_HINT}") from None
        raise


_PATH_STARTS = ("/", "./", "../", "~")
_LOCAL_FILE_HINT = "to send a local file use a file:// URL (needs images.allow_local_paths)"


def _decode_base64(clean: str) -> bytes:
    """Strict base64: standard or URL-safe alphabet, padding optional, nothing else."""
    body = clean.rstrip("=")
    urlsafe = "-" in body or "_" in body
    bad = _BASE64_FORBIDDEN.search(clean)
    if bad:
        problem = (f"character {bad.group()!r} at position {bad.start()} (whitespace ignored) "
                   "is not in the base64 alphabet")
        if clean.startswith(_PATH_STARTS):
            problem += f"; {_LOCAL_FILE_HINT}"
    elif "=" in body:
        problem = "'=' padding appears before the end"
    elif urlsafe and ("+" in body or "/" in body):
        problem = "it mixes the standard (+ /) and URL-safe (- _) alphabets"
    elif len(body) % 4 == 1:
        problem = f"its length ({len(body)} characters without padding) is impossible; cut off?"
    else:
        padded = body + "=" * (-len(body) % 4)
        try:
            return base64.b64decode(padded, altchars=b"-_" if urlsafe else None, validate=True)
        except binascii.Error as exc:
            problem = str(exc)
    raise InvalidBase64(f"the image is not valid base64: {problem}. Send the image file's bytes "
                        "base64-encoded, or a data:image/...;base64, URL")


def _check_text_length(length: int, policy: ImageInputPolicy) -> None:
    # Cheap refusal before any copy: base64 takes 4 characters per 3 bytes; a quarter more
    # leaves room for line breaks.
    limit = (policy.max_image_bytes // 3 + 1) * 4 * 5 // 4 + 1024
    if length > limit:
        raise ImageTooLarge(f"the image string is {length:,} characters; base64 of an image "
                            f"within images.max_image_bytes ({policy.max_image_bytes:,} bytes) "
                            f"is at most about {limit:,}")


def decode_data_url(url: str, policy: ImageInputPolicy) -> Image.Image:
    """Decode a ``data:image/<type>;base64,<payload>`` URL."""
    _check_text_length(len(url), policy)
    url = url.strip()
    expected = "expected data:image/<type>;base64,<data>"
    if url[:5].lower() != "data:":
        raise InvalidDataURL(f"a data URL must start with 'data:'; {expected}")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise InvalidDataURL(f"the data URL has no ',' between header and data; {expected}")
    media_type, *params = [part.strip().lower() for part in header.split(";")]
    if not media_type.startswith("image/"):
        raise InvalidDataURL(f"the data URL has media type {media_type or '(none)'!r}; expected "
                             "an image type such as image/png or image/jpeg")
    if "base64" not in params:
        raise InvalidDataURL(f"the data URL is not base64-encoded (header {header[:80]!r} lacks "
                             f"';base64'); expected data:{media_type};base64,<data>")
    return decode_base64_image(payload, policy)


# --- local paths -------------------------------------------------------------------------


def read_image_path(path: str, policy: ImageInputPolicy) -> Image.Image:
    """Read an image file (a path or file:// URL) that resolves inside images.local_path_root.

    Relative paths are taken relative to the root; symlinks are resolved before the check.
    """
    if not policy.allow_local_paths:
        raise LocalPathRefused(
            f"local image paths are turned off, so {path[:200]!r} was not read; set images."
            "allow_local_paths: true and images.local_path_root to the folder to read from")
    root = os.path.realpath(policy.local_path_root or "")
    try:
        target = os.path.realpath(os.path.join(root, _path_from_file_url(path)))
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise ImageError(f"{path[:200]!r} is not a usable file path: {exc}") from None
    if os.path.commonpath([root, target]) != root:
        raise LocalPathRefused(
            f"{path!r} resolves to {target} (symlinks followed), which is outside images."
            f"local_path_root ({root}); put the image under that folder or change the root")
    try:
        info = os.stat(target)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image path {path} is not a regular file")
        check_byte_count(info.st_size, policy, f"image file {path}")
        with open(target, "rb") as handle:
            data = handle.read(policy.max_image_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    check_byte_count(len(data), policy, f"image file {path}")  # it may grow after stat
    return decode_from(f"image file {path}", data, policy)


def _path_from_file_url(path: str) -> str:
    if path[:7].lower() != "file://":
        return path
    parts = urlsplit(path)
    if parts.netloc not in ("", "localhost"):
        raise LocalPathRefused(f"{path!r} names host {parts.netloc!r}; file URLs may only "
                               "name local files (file:///path/to/image.png)")
    return unquote(parts.path)


# --- dispatch and helpers ------------------------------------------------------------------


def load_image_reference(ref: str, policy: ImageInputPolicy) -> Image.Image:
    """Load an OpenAI ``image_url.url`` or ``/predict`` image string, whatever it holds.

    A bare string is base64, never a path: JPEG base64 itself starts with "/9j/".
    """
    head = ref[:32].lstrip().lower()
    if head.startswith("data:"):
        return decode_data_url(ref, policy)
    if head.startswith(("http://", "https://")):
        from raysight.image_urls import fetch_image_url

        return fetch_image_url(ref.strip(), policy)
    if head.startswith("file://"):
        return read_image_path(ref.strip(), policy)
    scheme = _URL_SCHEME.match(head)
    if scheme:
        raise URLRefused(f"image references with scheme {scheme.group(1)!r} are not understood; "
                         "send an http(s):// URL, a data:image/...;base64, URL, a file:// path "
                         "or plain base64")
    return decode_base64_image(ref, policy)


def load_image(source: Any, policy: ImageInputPolicy) -> Image.Image:
    """Load bytes, a PIL image, a path-like or a reference string into a checked RGB image."""
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(source), policy)
    if isinstance(source, Image.Image):
        _check_pixel_count(source.size, policy)
        _load_fully(source)
        return _normalise(source, policy)
    if isinstance(source, str):
        return load_image_reference(source, policy)
    if isinstance(source, os.PathLike):
        return read_image_path(str(os.fspath(source)), policy)
    raise ImageError(f"cannot load an image from a {type(source).__name__}; expected bytes, a "
                     "PIL image, or a string (base64, data: URL, http(s) URL or file:// path)")


def check_image_count(count: int, policy: ImageInputPolicy) -> None:
    """Refuse a request (or row) that carries more images than the policy allows."""
    if count > policy.max_images_per_request:
        raise TooManyImages(f"this request has {count} images; the limit is "
                            f"{policy.max_images_per_request} (images.max_images_per_request)")


def image_digest(image: Image.Image) -> str:
    """A stable hex hash of an image's mode, size and pixels (equal pixels, equal digest)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode};{image.size[0]}x{image.size[1]};".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
