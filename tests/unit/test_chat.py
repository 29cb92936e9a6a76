"""Chats are checked before any model work, with errors that say what to change."""

from __future__ import annotations

import pytest

from raysight.chat import count_images, prompt_messages, split_messages
from raysight.errors import InvalidRequest


def _load(source):
    return f"decoded:{source}"


def test_split_keeps_image_order_and_turns():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:one"}},
            {"type": "text", "text": "first?"},
        ]},
        {"role": "assistant", "content": "a circle"},
        {"role": "user", "content": [
            {"type": "text", "text": "and"},
            {"type": "image_url", "image_url": "data:two"},
        ]},
    ]
    template, images = split_messages(messages, _load)
    assert images == ["decoded:data:one", "decoded:data:two"]
    assert template[1]["content"] == [{"type": "image"}, {"type": "text", "text": "first?"}]
    assert template[2] == {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]}
    assert count_images(messages) == 2


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        ([{"role": "user", "content": 3}], "content must be a string or a list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content part type 'audio'"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "'image_url' must be"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message"),
        ([{"role": "assistant", "content": [{"type": "image", "image": b"x"}]}], "only accepted in user"),
    ],
)
def test_bad_chats_are_refused_with_a_reason(messages, message):
    with pytest.raises(InvalidRequest, match=message):
        split_messages(messages, _load)


def test_prompt_messages():
    assert prompt_messages("hi", None) == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert prompt_messages(None, b"img")[0]["content"] == [{"type": "image", "image": b"img"}]
    with pytest.raises(InvalidRequest, match="prompt, an image"):
        prompt_messages("", None)
