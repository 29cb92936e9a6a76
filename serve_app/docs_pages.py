"""/docs (Swagger UI) and /redoc (ReDoc) with no network: their scripts and styles are served
by the app from the installed `fastapi-standalone-docs` package, never from a CDN.

The pages, their assets and /openapi.json are open (no API key: they describe the API and
hold no data; a browser cannot send a bearer header for a page it opens). Calling a route
from "Try it out" needs the key, given once with Swagger UI's Authorize button.
ServeConfig.docs = false turns all of it off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

DOCS, REDOC, ASSETS = "/docs", "/redoc", "/docs/assets"


def assets_folder() -> Path:
    """The installed package's folder of Swagger UI and ReDoc builds."""
    import fastapi_standalone_docs

    return Path(fastapi_standalone_docs.__file__).resolve().parent / "static"


def add_docs_pages(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets from the installed package."""
    folder = assets_folder()
    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")
    title = f"{app.title} API"
    favicon = f"{ASSETS}/fastapi/favicon.png"

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=title,
            swagger_js_url=f"{ASSETS}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger/swagger-ui.css",
            swagger_favicon_url=favicon,
            # No validator badge: it would send the schema to an outside validator.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get(REDOC, include_in_schema=False)
    async def redoc():
        return get_redoc_html(
            openapi_url=app.openapi_url, title=title,
            redoc_js_url=f"{ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=favicon, with_google_fonts=False,
        )


def is_docs_path(path: str) -> bool:
    return path in (DOCS, REDOC) or path.startswith(ASSETS + "/")
