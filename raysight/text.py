"""Checks on text that a request brings in, made where it enters (a chat's parts, an embed
text, a label, an image reference) so that a bad one is refused alone, by name, before it
reaches a tokenizer or a batch.

JSON may carry lone UTF-16 surrogates ("\\ud800"); Python decodes them into a str that no
tokenizer accepts and that cannot be written back as UTF-8 (not even in an error message), so
such text is refused with a 400 that names the field. NUL characters encode fine and are left
alone: tokenizers and the JSON answer both take them. Text far longer than max_text_tokens
could hold is refused by its length, unread.
"""

from __future__ import annotations

from raysight.errors import InvalidRequest
from raysight.spec import PROMPT_CHARS_PER_TOKEN


def check_encodable(text: str, field: str) -> None:
    """Refuse `text` (the request's `field`) when it cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # The character is written escaped: the message itself must encode.
        escaped = text[exc.start].encode("unicode_escape").decode("ascii")
        raise InvalidRequest(
            f"{field} contains a lone surrogate ({escaped}) at character {exc.start}; "
            "send text that is valid Unicode (encodable as UTF-8)"
        ) from None


def check_length(chars: int, field: str, max_tokens: int) -> None:
    """Refuse `chars` characters of text (the request's `field`) that could not fit in
    `max_tokens` tokens at PROMPT_CHARS_PER_TOKEN characters per token, before a tokenizer
    spends seconds on it (a tokenizer reads the whole text even when it truncates)."""
    limit = max_tokens * PROMPT_CHARS_PER_TOKEN
    if chars > limit:
        raise InvalidRequest(
            f"{field} is {chars:,} characters long; this model reads at most {max_tokens} "
            f"tokens (max_text_tokens), so texts over {limit:,} characters "
            f"({PROMPT_CHARS_PER_TOKEN} per token) are refused unread"
        )
