"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/unit/test_openapi.py: how to draw a
valid value of the schema's "image-ref" string format (openai_api.IMAGE_FORMAT). A JSON schema
cannot say "base64 of a decodable image"; this tells the tester, as the schema's description
tells a person. Random strings in that format would be refused 400, rightly."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.api_server import shape_images

_IMAGES = shape_images(3)
schemathesis.openapi.format("image-ref", st.sampled_from(
    _IMAGES + ["data:image/png;base64," + image for image in _IMAGES]))
