"""The inputs every variant gets: the same JPEG images and the same request bodies."""

from __future__ import annotations

import base64
import io

PROMPT = "describe the image ."


def jpeg_images(count: int, size: int = 224, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs: smooth colour fields (they compress like photos, unlike noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype="uint8"))
        buffer = io.BytesIO()
        coarse.resize((size, size), Image.BILINEAR).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def data_url(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode()


def embedding_body(model: str, image: bytes) -> dict:
    """An OpenAI-style /v1/embeddings request for one image (the Infinity convention)."""
    return {"model": model, "input": [data_url(image)], "modality": "image"}


def chat_body(model: str, image: bytes, max_tokens: int) -> dict:
    """An OpenAI chat completion with one image and a short prompt, greedy."""
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}},
               {"type": "text", "text": PROMPT}]
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0}
