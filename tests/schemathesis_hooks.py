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


@schemathesis.hook
def filter_case(ctx, case) -> bool:
    """Drop negative cases whose only mutation negates the image-ref format. To violate a custom
    format the tester drops it and draws any string, counting every draw as invalid; but a
    draw can be a real image (one of the strings above), which the server rightly accepts, and
    no JSON schema can spell "not a decodable image". Cases negating any other keyword stay."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_negative:
        return True
    mutations = getattr(meta.phase.data, "mutations", ())
    return not mutations or any(set(m.keywords) - {"format"} for m in mutations)
