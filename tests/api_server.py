"""The whole HTTP app over real HTTP without Ray: the built-in models in-process (LocalClient),
a small search index of drawn shapes, uvicorn on a free 127.0.0.1 port in a thread. For tests
that drive the app from outside the process (an API tester, a browser)."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

from serve_app.direct_ingress import free_port  # noqa: F401 - the tests import it from here
from tests.conftest import png_bytes

API_KEY = "test-key"


def build_index(folder: Path, count: int = 12) -> Path:
    """A FAISS index of shapes-clip vectors of `count` drawn shapes, ids naming each caption."""
    import numpy as np

    from raysight.engines import build_engine
    from raysight.engines.embed import EmbedRequest
    from raysight.index import VectorIndex
    from raysight.shapes import make_shapes
    from raysight.spec import ModelSpec

    engine = build_engine(ModelSpec(model="builtin:shapes-clip"))
    shapes = make_shapes(count, seed=5)
    results = engine.run([EmbedRequest(image=image) for image, _ in shapes])
    ids = [f"{n:02d}:{label.caption}" for n, (_, label) in enumerate(shapes)]
    VectorIndex.build(np.stack([r.vector for r in results]), ids,
                      model="builtin:shapes-clip").save(folder)
    return folder


def shape_images(count: int = 3) -> list[str]:
    """Base64 PNGs of a few drawn shapes."""
    from raysight.shapes import make_shapes

    return [base64.b64encode(png_bytes(image)).decode() for image, _ in make_shapes(count, seed=9)]


@contextlib.contextmanager
def served_app(index_folder: Path, batch_wait_s: float | None = None,
               **config) -> Iterator[str]:
    """Serve the HTTP app over the built-in models; yields its base URL. `batch_wait_s`
    lengthens each model's batch wait, so that a concurrent burst shares batches."""
    import uvicorn

    from raysight.spec import ModelSpec
    from serve_app.config import IndexConfig, ServeConfig
    from serve_app.deployment import ModelServer
    from serve_app.gateway import Gateway, LocalClient
    from serve_app.routes import build_http_api

    # A small generation limit keeps a sampled (temperature > 0) answer short.
    waits = {} if batch_wait_s is None else {"batch_wait_timeout_s": batch_wait_s}
    specs = [ModelSpec(model="builtin:shapes-vlm", task="generate",
                       generation={"max_new_tokens": 8, "max_new_tokens_limit": 16}, **waits),
             ModelSpec(model="builtin:shapes-clip", task="embed", **waits)]
    settings = ServeConfig.for_specs(specs, indexes=[IndexConfig(path=str(index_folder))],
                                     **config)
    gateway = Gateway(settings, {spec.served_name: LocalClient(ModelServer(spec))
                                 for spec in specs})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_http_api(gateway), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test HTTP server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
