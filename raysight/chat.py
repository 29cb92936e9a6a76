"""Chats as raysight takes them: OpenAI-style messages, checked and split into template
messages (images as placeholders) and the decoded images in order."""

from __future__ import annotations

from typing import Any, Callable

from raysight.errors import InvalidRequest
from raysight.text import check_encodable

ROLES = ("system", "user", "assistant")


def count_images(messages: list[dict]) -> int:
    """How many image parts a list of messages carries (without decoding any)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            total += sum(
                1
                for part in content
                if isinstance(part, dict) and part.get("type") in ("image_url", "image")
            )
    return total


def text_chars(messages: list[dict]) -> int:
    """How many characters of text a list of messages carries (before any tokenizing)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(
                len(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return total


def _image_source(part: dict, index: int, field: str) -> Any:
    if part["type"] == "image":
        if "image" not in part:
            raise InvalidRequest(f"content part {index}: an 'image' part needs an 'image' field")
        source = part["image"]
        if isinstance(source, str):
            check_encodable(source, f"{field}.image")
        return source
    image_url = part.get("image_url")
    where = f"{field}.image_url"
    if isinstance(image_url, dict):
        image_url, where = image_url.get("url"), f"{where}.url"
    if not isinstance(image_url, str) or not image_url:
        raise InvalidRequest(
            f"content part {index}: 'image_url' must be {{\"url\": \"data:image/png;base64,...\"}}"
        )
    check_encodable(image_url, where)
    return image_url


def split_messages(
    messages: list[dict], load_image: Callable[[Any], Any]
) -> tuple[list[dict], list[Any]]:
    """Check `messages` and return (template messages, images).

    Template messages hold text parts and `{"type": "image"}` placeholders in the order the
    images appear; `load_image` turns each image source into a decoded image.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content} objects")
    template: list[dict] = []
    images: list[Any] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"message {position} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"message {position}: role must be one of {', '.join(ROLES)}; got {role!r}"
            )
        content = message.get("content")
        if isinstance(content, str):
            check_encodable(content, f"messages[{position}].content")
            template.append({"role": role, "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(
                f"message {position}: content must be a string or a list of content parts"
            )
        parts: list[dict] = []
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidRequest(f"message {position}, part {index}: 'text' must be a string")
                check_encodable(part["text"], f"messages[{position}].content[{index}].text")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("image_url", "image"):
                if role != "user":
                    raise InvalidRequest(
                        f"message {position}: images are only accepted in user messages"
                    )
                source = _image_source(part, index, f"messages[{position}].content[{index}]")
                images.append(load_image(source))
                parts.append({"type": "image"})
            else:
                raise InvalidRequest(
                    f"message {position}, part {index}: unsupported content part type "
                    f"{kind!r}; use 'text' or 'image_url'"
                )
        template.append({"role": role, "content": parts})
    if template[-1]["role"] != "user":
        raise InvalidRequest("the last message must be from the user")
    return template, images


def prompt_messages(prompt: str | None, image: Any | None) -> list[dict]:
    """The chat for a plain (image, prompt) pair: one user turn, image first."""
    content: list[dict] = []
    # Named as the caller sent them (/predict's fields), not as the chat built from them.
    if isinstance(prompt, str):
        check_encodable(prompt, "prompt")
    if isinstance(image, str):
        check_encodable(image, "image")
    if image is not None:
        content.append({"type": "image", "image": image})
    if prompt:
        content.append({"type": "text", "text": prompt})
    if not content:
        raise InvalidRequest("give a prompt, an image, or both")
    return [{"role": "user", "content": content}]
