"""Where jobs and indexes keep their files: a local folder or object storage (s3://, gs://).

Both go through pyarrow filesystems, so one code path reads and writes either. Object-storage
credentials and the endpoint come from the standard environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, or the node's IAM role), never
from raysight's own settings, and every message raysight shows has them taken out: a location
given as ``s3://KEY:SECRET@bucket/...`` is shown as ``s3://***@bucket/...``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from raysight.errors import ConfigError
from raysight.paths import is_uri

# Environment variables whose values must never be shown.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URI user info and the values of credential variables replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def open_filesystem(location: str) -> tuple[Any, str]:
    """The pyarrow filesystem and path for a local path or a URI (s3://, gs://, file://)."""
    import pyarrow.fs as pafs

    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types here
            raise ConfigError(f"cannot open {redact(location)!r}: {redact(str(exc))}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def storage_error(action: str, location: str, exc: BaseException) -> ConfigError:
    """A ConfigError for a failed read or write at `location`, credentials taken out."""
    return ConfigError(f"cannot {action} {redact(location)!r}: {redact(str(exc))}")


def read_bytes(location: str) -> bytes:
    """The whole file at a local path or URI."""
    filesystem, path = open_filesystem(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error("read", location, exc) from None


def write_bytes(location: str, data: bytes) -> None:
    """Write `data` to a local path or URI, creating the folder above it if needed."""
    import posixpath

    filesystem, path = open_filesystem(location)
    try:
        if not is_uri(location):  # object stores have no folders (S3 would get a marker)
            filesystem.create_dir(posixpath.dirname(path), recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
    except OSError as exc:
        raise storage_error("write", location, exc) from None


def join(location: str, name: str) -> str:
    """`name` inside the folder `location` (a local path or a URI)."""
    return f"{location.rstrip('/')}/{name}"
