"""Image input: bytes, base64, data URLs, local paths and http(s) URLs in, RGB images out.

Decoding the bytes within the limits lives in ``raysight.image_decode``; fetching http(s) URLs
safely in ``raysight.image_urls``.

Every image raysight accepts, online or offline, comes through here, so the limits in
``ImageInputPolicy`` hold everywhere. A refused image raises a typed ``ImageError`` whose
message says what was wrong, the limit, and the setting (``images.<field>``) that governs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from raysight.errors import (EmptyImage, ImageError, ImageTooLarge, InvalidBase64, InvalidDataURL,
                             LocalPathRefused, NotAnImage, TooManyImages, URLRefused)
from raysight.image_decode import (check_byte_count, decode_from, decode_image_bytes,
                                   decode_loaded_image)
from raysight.spec import ImageInputPolicy

if TYPE_CHECKING:
    from PIL import Image

_BASE64_FORBIDDEN = re.compile(r"[^A-Za-z0-9+/=_-]")
_URL_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://")


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
        return decode_loaded_image(source, policy)
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
