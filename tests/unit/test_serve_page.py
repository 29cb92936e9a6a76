"""The web page's routes without Ray or a browser: the page loads without the API key and
fetches nothing from another host; index thumbnails need the key and come only from files
the index holds."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from raysight.spec import ModelSpec
from serve_app.config import IndexConfig, ServeConfig

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "serve_app" / "ui"
KEY = {"Authorization": "Bearer k"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from raysight.shapes import write_shapes_folder

    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "images", 3, seed=5, corrupt=1)


@pytest.fixture(scope="module")
def http(shapes, tmp_path_factory):
    """The HTTP app over an index of the three drawn images and the corrupt file (random
    vectors: these routes never search, they serve what the index lists)."""
    import numpy as np
    from fastapi.testclient import TestClient

    from raysight.index import VectorIndex
    from serve_app.gateway import Gateway
    from serve_app.routes import build_http_api

    ids = [str(path) for path in sorted(shapes.glob("*.png"))] + ["not/a/file.png"]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8))
    folder = VectorIndex.build(vectors, ids).save(tmp_path_factory.mktemp("index") / "shapes")
    config = ServeConfig.for_specs([ModelSpec(model="builtin:shapes-clip")], api_key="k",
                                   indexes=[IndexConfig(path=str(folder))])

    class NeverCalled:
        """These routes must not reach a model; a call fails the test loudly."""

        async def call(self, method, *args):
            raise AssertionError(f"a page route called the model ({method})")

        def stream(self, method, *args):
            raise AssertionError(f"a page route called the model ({method})")

    with TestClient(build_http_api(Gateway(config, {"shapes-clip": NeverCalled()}))) as client:
        yield client


def test_the_page_and_its_assets_load_without_the_key(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(f"/ui/{asset}" in page.text for asset in ("main.js", "ui.css", "icon.svg"))
    # Every file of the page (main.js imports the other modules) is served from /ui/.
    for asset in PAGE.iterdir():
        if asset.is_file() and asset.name != "index.html":
            response = http.get(f"/ui/{asset.name}")
            assert response.status_code == 200, asset.name
            kind = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
            assert response.headers["content-type"].startswith(kind[asset.suffix]), asset.name
    # Only the listed assets are open; anything else under /ui/ needs the key, then is a 404.
    assert http.get("/ui/index.html").status_code == 401
    missing = http.get("/ui/routes.py", headers=KEY)  # a file next to the page's folder
    assert missing.status_code == 404 and "no page asset named 'routes.py'" in missing.text


def test_the_page_fetches_nothing_from_another_host():
    for path in [*PAGE.glob("*.js"), PAGE / "index.html", PAGE / "ui.css"]:
        text, name = path.read_text(encoding="utf-8"), path.name
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, flags=re.I), name
        assert "@import" not in text and "url(" not in text, name


def test_thumbnails_need_the_key_and_are_small(http, shapes):
    from PIL import Image

    path = str(shapes / "img_00000.png")
    assert http.get("/search/image", params={"id": path}).status_code == 401
    response = http.get("/search/image", params={"id": path, "size": 32}, headers=KEY)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 32  # drawn at 64 px


@pytest.mark.parametrize("asked", [
    "/etc/passwd",                                         # a real file, not in the index
    str(Path(__file__).resolve()),                         # another real file
    "{shapes}/../images/img_00000.png",                    # an indexed file, spelled with ..
    "img_00000.png",                                       # relative
    "{shapes}/labels.csv",                                 # next to the images, not indexed
])
def test_only_ids_of_the_index_are_served(http, shapes, asked):
    asked = asked.format(shapes=shapes)
    response = http.get("/search/image", params={"id": asked}, headers=KEY)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "not_found" and "is not an image of index 'shapes'" in error["message"]


def test_an_indexed_id_that_is_no_image_file_is_a_readable_error(http, shapes):
    gone = http.get("/search/image", params={"id": "not/a/file.png"}, headers=KEY)
    assert gone.status_code == 404 and "no such file" in gone.json()["error"]["message"]
    broken = http.get("/search/image", params={"id": str(shapes / "corrupt_00000.png")},
                      headers=KEY)
    assert broken.status_code == 400 and "truncated" in broken.json()["error"]["message"]
    wrong_index = http.get("/search/image", params={"id": "x", "index": "other"}, headers=KEY)
    assert wrong_index.status_code == 404 and "indexes: shapes" in wrong_index.text


def test_index_list_and_openapi(http):
    listed = http.get("/search/indexes", headers=KEY).json()
    assert listed == {"indexes": [{"name": "shapes", "size": 5, "model": None}]}
    paths = http.get("/openapi.json", headers=KEY).json()["paths"]
    assert {"/search/image", "/search/indexes"} <= set(paths)
    assert "/" not in paths and "/ui/{name}" not in paths
    parameters = {p["name"] for p in paths["/search/image"]["get"]["parameters"]}
    assert parameters == {"id", "index", "size"}
