"""The web page for trying raysight by hand, and the two small routes it needs beyond the API.

    GET /                  the page (serve_app/ui/index.html); no API key, it holds no data
    GET /ui/<asset>        its stylesheet and script; no API key
    GET /search/indexes    the served indexes (name, size, model)
    GET /search/image      a thumbnail of one image of an index, by its id

The page is plain HTML, CSS and JavaScript shipped in the package: no build step, nothing
fetched from another host. It calls the same API as any client, with the key the user types.
/search/image serves only files whose id is in a served index (exact match): any other path,
`..` tricks included, is a 404, whatever exists on disk.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, Response

from raysight.errors import NotFound
from serve_app.gateway import Gateway

logger = logging.getLogger(__name__)

PAGE_FOLDER = Path(__file__).with_name("ui")
# The only files served from PAGE_FOLDER; a name not listed is never looked up on disk.
_SCRIPTS = ("main.js", "api.js", "panel.js", "ask.js", "search.js", "classify.js")
ASSETS = {
    "ui.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    **{name: "text/javascript; charset=utf-8" for name in _SCRIPTS},
}
# Paths the API key middleware lets through: the page must load before the user types a key.
PAGE_PATHS = frozenset({"/"} | {f"/ui/{name}" for name in ASSETS})
# The page's data routes: they need the key like the rest of the API.
DATA_PATHS = frozenset({"/search/indexes", "/search/image"})
THUMBNAIL_DEFAULT = 160
THUMBNAIL_MAX = 1024


def thumbnail(path: str, size: int) -> bytes:
    """JPEG bytes of the image at `path`, its longer side at most `size` (never enlarged).

    Decoded under the default image policy, so a huge or broken file is refused, not decoded."""
    from raysight.image_decode import decode_image_bytes
    from raysight.spec import ImageInputPolicy

    policy = ImageInputPolicy()
    try:
        with open(path, "rb") as handle:
            data = handle.read(policy.max_image_bytes + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound(f"the index lists {path!r}, but there is no such file here") from None
    image = decode_image_bytes(data, policy)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def add_page_routes(app: FastAPI, gateway: Gateway) -> None:
    """Serve the page and its assets, the index list and index thumbnails on `app`."""
    # Built once: a request's id is checked against the ids the index was built with.
    members = {name: frozenset(index.ids) for name, (_, index) in gateway.indexes.items()}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE_FOLDER / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ASSETS:
            raise NotFound(f"no page asset named {name!r}")
        return FileResponse(PAGE_FOLDER / name, media_type=ASSETS[name])

    @app.get("/search/indexes", summary="The vector indexes /search can use")
    async def indexes():
        return {"indexes": [
            {"name": name, "size": len(index), "model": config.model or index.meta.get("model")}
            for name, (config, index) in gateway.indexes.items()
        ]}

    @app.get("/search/image", summary="A thumbnail of one image of a served index",
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}},
                        404: {"description": "the id is not in the index, or not a file"}})
    async def index_image(
        image_id: str = Query(..., alias="id",
                              description="An id /search returned (a path the index holds)."),
        index: str | None = Query(None, description="The index; needed if several are served."),
        size: int = Query(THUMBNAIL_DEFAULT, ge=16, le=THUMBNAIL_MAX,
                          description="Longest side of the thumbnail in pixels."),
    ):
        name, _ = gateway.index(index)
        if image_id not in members[name]:
            raise NotFound(f"{image_id[:200]!r} is not an image of index {name!r}; only ids "
                           "that /search returns are served")
        data = await asyncio.to_thread(thumbnail, image_id, size)
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})
