"""Paths given on one machine and opened on another.

A job's driver, a Serve replica and a Ray Data worker each run in a folder of their own, so a
relative path means something different in each. Configs therefore make local paths absolute
where they are written (the driver, the user's shell); URIs (s3://, gs://, ...) stay as given.
"""

from __future__ import annotations

import os


def is_uri(value: str) -> bool:
    return "://" in value


def absolute(value: str) -> str:
    """`value` as an absolute local path, or unchanged when it is a URI."""
    if is_uri(value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_if_exists(value: str) -> str:
    """A local folder or file as an absolute path; anything else (a Hugging Face id such as
    'Qwen/Qwen2-VL-2B-Instruct', a builtin: name) unchanged."""
    if is_uri(value) or ":" in value.split("/")[0] or not os.path.exists(os.path.expanduser(value)):
        return value
    return absolute(value)
