"""Image input: every bad input fails with its own error type and an actionable message.

No Ray: test images are made in code. Image URLs are tested in test_image_urls.py.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from raysight.errors import (
    CorruptImage,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    InvalidBase64,
    InvalidDataURL,
    LocalPathRefused,
    NotAnImage,
    TooManyImages,
    URLRefused,
)
from raysight.images import (
    check_image_count,
    decode_base64_image,
    decode_data_url,
    decode_image_bytes,
    image_digest,
    load_image,
    load_image_reference,
    read_image_path,
)
from raysight.spec import ImageInputPolicy

DEFAULT = ImageInputPolicy()


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def gradient(size=(64, 48)) -> Image.Image:
    """A picture with detail everywhere, so truncating its file loses real data."""
    image = Image.new("RGB", size)
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(size[1])
                   for x in range(size[0])])
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "cat.png").write_bytes(encode(gradient((20, 10))))
    return folder


def path_policy(root: Path, **overrides) -> ImageInputPolicy:
    return ImageInputPolicy(allow_local_paths=True, local_path_root=str(root), **overrides)


# --- bad bytes -----------------------------------------------------------------------------


def test_empty_bytes_are_refused():
    with pytest.raises(EmptyImage, match="empty"):
        decode_image_bytes(b"", DEFAULT)


def test_text_bytes_are_not_an_image():
    with pytest.raises(NotAnImage, match=r"not an image.*PNG, JPEG.*starts with b'hello"):
        decode_image_bytes(b"hello, this is text", DEFAULT)


def test_formats_outside_the_accepted_list_are_refused():
    ppm = b"P6\n2 2\n255\n" + bytes(12)  # PIL reads PPM, raysight does not take it
    with pytest.raises(NotAnImage, match="supported format"):
        decode_image_bytes(ppm, DEFAULT)


def test_truncated_png_is_corrupt():
    data = encode(gradient())
    with pytest.raises(CorruptImage, match="truncated or damaged"):
        decode_image_bytes(data[: len(data) // 2], DEFAULT)


def test_truncated_jpeg_is_corrupt():
    data = encode(gradient((128, 128)), "JPEG", quality=95)
    with pytest.raises(CorruptImage, match="truncated"):
        decode_image_bytes(data[: len(data) // 2], DEFAULT)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # refused on its own, not via a global


def test_png_cut_inside_its_header_is_corrupt():
    with pytest.raises(CorruptImage, match="header is truncated or damaged"):
        decode_image_bytes(encode(gradient())[:20], DEFAULT)


def test_bytes_over_the_limit_are_refused():
    data = encode(gradient())
    expected = rf"{len(data):,} bytes.*limit is 100 bytes.*max_image_bytes"
    with pytest.raises(ImageTooLarge, match=expected):
        decode_image_bytes(data, ImageInputPolicy(max_image_bytes=100))


def test_decompression_bomb_is_refused_from_its_header(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = bomb_png(100_000, 100_000)
    assert len(data) < 200
    start = time.perf_counter()
    expected = r"100000x100000 = 10,000,000,000 pixels.*max_image_pixels"
    with pytest.raises(ImageTooLarge, match=expected):
        decode_image_bytes(data, DEFAULT)
    assert time.perf_counter() - start < 0.5


def test_our_pixel_limit_wins_over_pils_when_set_higher(monkeypatch):
    def stop_before_decoding(self):
        raise RuntimeError("size check passed")

    monkeypatch.setattr(ImageFile.ImageFile, "load", stop_before_decoding)
    # 15000x13000 is past PIL's own bomb *error* threshold (~179M); our limit here is 200M.
    policy = ImageInputPolicy(max_image_pixels=200_000_000)
    with pytest.raises(CorruptImage, match="size check passed"):
        decode_image_bytes(bomb_png(15_000, 13_000), policy)
    with pytest.raises(ImageTooLarge, match="210,000,000 pixels; the limit is 200,000,000"):
        decode_image_bytes(bomb_png(15_000, 14_000), policy)


def test_pil_image_over_the_pixel_limit_is_refused():
    with pytest.raises(ImageTooLarge, match="64x48 = 3,072 pixels.*max_image_pixels"):
        load_image(gradient(), ImageInputPolicy(max_image_pixels=1000))


def test_unsupported_source_type_is_refused():
    with pytest.raises(ImageError, match="from a int; expected bytes, a PIL image"):
        load_image(42, DEFAULT)


# --- bad base64 and data URLs --------------------------------------------------------------


def test_bad_base64_names_the_offending_character():
    with pytest.raises(InvalidBase64, match=r"not valid base64: character '!' at position 3"):
        decode_base64_image("abc!defg", DEFAULT)


def test_cut_off_base64_is_refused():
    with pytest.raises(InvalidBase64, match="cut off"):
        decode_base64_image("abcde", DEFAULT)


def test_base64_mixing_alphabets_is_refused():
    with pytest.raises(InvalidBase64, match="mixes the standard"):
        decode_base64_image("ab+d-fgh", DEFAULT)


def test_bare_path_is_read_as_base64_and_hints_at_file_urls():
    with pytest.raises(InvalidBase64, match="file://"):
        load_image_reference("/tmp/cat.png", DEFAULT)


def test_huge_base64_string_is_refused_before_decoding():
    expected = r"10,000 characters; base64 of an image within images.max_image_bytes \(1,000"
    with pytest.raises(ImageTooLarge, match=expected):
        decode_base64_image("A" * 10_000, ImageInputPolicy(max_image_bytes=1000))


def test_base64_decoding_past_the_byte_limit_is_refused():
    with pytest.raises(ImageTooLarge, match=r"1,050 bytes.*max_image_bytes"):
        decode_base64_image("A" * 1400, ImageInputPolicy(max_image_bytes=1000))


def test_empty_base64_is_refused():
    with pytest.raises(EmptyImage, match="image string is empty"):
        decode_base64_image(" \n ", DEFAULT)


def test_data_url_with_text_type_is_refused():
    with pytest.raises(InvalidDataURL, match=r"media type 'text/plain'; expected an image type"):
        decode_data_url("data:text/plain;base64,aGVsbG8=", DEFAULT)


def test_data_url_without_base64_marker_is_refused():
    with pytest.raises(InvalidDataURL, match="lacks ';base64'"):
        decode_data_url("data:image/png,iVBORw0KGgo=", DEFAULT)


def test_data_url_without_comma_is_refused():
    with pytest.raises(InvalidDataURL, match="no ','"):
        load_image_reference("data:image/png;base64", DEFAULT)


def test_unknown_scheme_is_refused_not_decoded_as_base64():
    with pytest.raises(URLRefused, match="scheme 'ftp'"):
        load_image_reference("ftp://example.com/cat.png", DEFAULT)


# --- bad local paths -----------------------------------------------------------------------


def test_paths_are_refused_while_turned_off(root):
    with pytest.raises(LocalPathRefused, match="allow_local_paths: true"):
        read_image_path(str(root / "cat.png"), DEFAULT)
    with pytest.raises(LocalPathRefused, match="turned off"):
        load_image_reference(f"file://{root}/cat.png", DEFAULT)


def test_path_outside_the_root_is_refused(root, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(gradient()))
    with pytest.raises(LocalPathRefused, match=r"outside images.local_path_root"):
        read_image_path(str(outside), path_policy(root))
    with pytest.raises(LocalPathRefused, match="outside"):
        read_image_path("../secret.png", path_policy(root))


def test_symlink_inside_the_root_pointing_outside_is_refused(root, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(gradient()))
    (root / "link.png").symlink_to(outside)
    with pytest.raises(LocalPathRefused, match=r"resolves to .*secret.png \(symlinks followed\)"):
        load_image_reference(f"file://{root}/link.png", path_policy(root))


def test_missing_file_names_the_path(root):
    with pytest.raises(ImageError, match=r"not found: .*nope.png"):
        read_image_path(str(root / "nope.png"), path_policy(root))


def test_directory_is_not_an_image_file(root):
    (root / "sub").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        read_image_path("sub", path_policy(root))


def test_file_size_is_checked_before_reading(root):
    with open(root / "big.png", "wb") as handle:
        handle.truncate(50_000_000)  # sparse: costs no disk and must not be read
    with pytest.raises(ImageTooLarge, match=r"big.png is 50,000,000 bytes.*max_image_bytes"):
        read_image_path("big.png", path_policy(root, max_image_bytes=1_000_000))


def test_file_url_naming_another_host_is_refused(root):
    with pytest.raises(LocalPathRefused, match="names host 'fileserver'"):
        read_image_path("file://fileserver/share/cat.png", path_policy(root))


def test_decode_error_from_a_file_names_the_file(root):
    (root / "notes.png").write_bytes(b"just some notes")
    with pytest.raises(NotAnImage, match=r"^image file notes.png: the data is not an image"):
        read_image_path("notes.png", path_policy(root))


def test_too_many_images():
    check_image_count(4, DEFAULT)
    with pytest.raises(TooManyImages) as caught:
        check_image_count(5, DEFAULT)
    assert str(caught.value) == (
        "this request has 5 images; the limit is 4 (images.max_images_per_request)"
    )


# --- good input ----------------------------------------------------------------------------


def test_png_bytes_decode_to_rgb():
    image = decode_image_bytes(encode(gradient()), DEFAULT)
    assert (image.mode, image.size) == ("RGB", (64, 48))
    assert image.getpixel((3, 2)) == gradient().getpixel((3, 2))


def test_jpeg_bytes_decode_to_rgb():
    data = encode(Image.new("RGB", (30, 20), (200, 30, 30)), "JPEG")
    image = load_image(bytearray(data), DEFAULT)
    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert abs(image.getpixel((10, 10))[0] - 200) < 8


def test_base64_with_line_breaks_and_urlsafe_unpadded():
    data = encode(gradient((9, 7)))
    assert decode_base64_image(base64.encodebytes(data).decode(), DEFAULT).size == (9, 7)
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert decode_base64_image(urlsafe, DEFAULT).size == (9, 7)


def test_jpeg_base64_starting_with_a_slash_is_not_a_path():
    text = base64.b64encode(encode(gradient((16, 8)), "JPEG")).decode()
    assert text.startswith("/9j/")
    assert load_image_reference(text, DEFAULT).size == (16, 8)


def test_data_url_decodes():
    payload = base64.b64encode(encode(gradient((5, 4)))).decode()
    image = load_image_reference(f"  data:Image/PNG;base64,{payload}\n", DEFAULT)
    assert image.size == (5, 4)


def test_file_url_and_relative_path_under_the_root(root):
    policy = path_policy(root)
    assert load_image_reference(f"file://{root}/cat.png", policy).size == (20, 10)
    assert read_image_path("cat.png", policy).size == (20, 10)
    assert load_image(root / "cat.png", policy).size == (20, 10)


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 128))
    rgb = decode_image_bytes(encode(image), DEFAULT)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0))[0] == 255 and 120 < rgb.getpixel((1, 0))[1] < 135


def test_gray_with_alpha_is_composited_on_white():
    rgb = decode_image_bytes(encode(Image.new("LA", (3, 3), (0, 0))), DEFAULT)
    assert rgb.getpixel((1, 1)) == (255, 255, 255)


def test_palette_image_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image_bytes(encode(palette), DEFAULT).getpixel((0, 0)) == (10, 200, 30)
    assert decode_image_bytes(encode(palette, transparency=1), DEFAULT).getpixel((0, 0)) == (
        255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    image = decode_image_bytes(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
                               DEFAULT)
    red, green, blue = image.getpixel((4, 4))
    assert image.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_16_bit_gray_is_scaled_not_clipped():
    deep = Image.new("I;16", (4, 4), 128 * 257)
    assert decode_image_bytes(encode(deep), DEFAULT).getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(gradient((40, 20)), "JPEG", exif=exif)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert decode_image_bytes(data, DEFAULT).size == (20, 40)


def test_resize_keeps_the_aspect_ratio():
    policy = ImageInputPolicy(resize_max_side=100)
    assert decode_image_bytes(encode(gradient((400, 100))), policy).size == (100, 25)
    assert decode_image_bytes(encode(gradient((30, 90))), policy).size == (30, 90)
    assert load_image(gradient((300, 600)), policy).size == (50, 100)


def test_large_jpeg_is_drafted_and_resized():
    data = encode(gradient((800, 600)), "JPEG")
    assert decode_image_bytes(data, ImageInputPolicy(resize_max_side=100)).size == (100, 75)


def test_pil_image_input_is_converted_and_not_modified():
    source = Image.new("RGBA", (6, 6), (0, 0, 255, 0))
    result = load_image(source, DEFAULT)
    assert result.mode == "RGB" and result.getpixel((0, 0)) == (255, 255, 255)
    assert source.mode == "RGBA"


def test_image_digest_follows_the_pixels():
    first = decode_image_bytes(encode(gradient()), DEFAULT)
    same = load_image(gradient(), DEFAULT)
    other = gradient()
    other.putpixel((0, 0), (1, 2, 3))
    assert image_digest(first) == image_digest(same)
    assert len(image_digest(first)) == 32
    assert image_digest(first) != image_digest(other)
    assert image_digest(first) != image_digest(first.convert("L").convert("RGB"))
