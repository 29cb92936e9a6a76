"""The single-process reference: what a good hand-written embedding server does, no Ray.

    python -m bench.reference_server --model DIR --max-batch-size 8 --port 8101

One process: uvicorn (an asyncio HTTP server) runs a bare ASGI app; each request's image is
decoded and preprocessed on a thread pool as soon as it arrives, then queued; one model
thread takes everything queued (up to ``--max-batch-size``) whenever it is free and runs one
forward. The same engine as raysight (raysight.engines, same model folder, same
preprocessing, caches off), the same request and answer shapes as ``/v1/embeddings``, so one
load generator drives both. It checks no more than it must (a JSON body with images), which
makes it an upper bound for what raysight's HTTP edge and Ray's hops may cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

BATCH_SIZE_HEADER = b"x-raysight-batch-size"


class ReferenceServer:
    """An ASGI app: POST /v1/embeddings (images), GET /healthz."""

    def __init__(self, folder: str, max_batch_size: int):
        from raysight.engines import build_engine
        from raysight.spec import ModelSpec

        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        self.engine = build_engine(ModelSpec(model=folder, max_batch_size=max_batch_size,
                                             preprocess_cache_bytes=0, vision_cache_bytes=0))
        self.max_batch_size = max_batch_size
        self.prepare_pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="prep")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.queue: asyncio.Queue | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/healthz":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        if scope["path"] != "/v1/embeddings" or scope["method"] != "POST":
            await _answer(send, 404, b'{"error":"not found"}')
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            data = json.loads(body)
            inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
        except (ValueError, KeyError, TypeError) as exc:
            await _answer(send, 400, json.dumps({"error": f"bad request: {exc}"}).encode())
            return
        answers = await asyncio.gather(*(self._embed(url) for url in inputs))
        failed = next((a for a in answers if isinstance(a, Exception)), None)
        if failed is not None:
            await _answer(send, 400, json.dumps({"error": str(failed)}).encode())
            return
        payload = {"object": "list", "model": data.get("model"), "data": [
            {"object": "embedding", "index": i, "embedding": vector.tolist()}
            for i, (vector, _) in enumerate(answers)]}
        batch = max(size for _, size in answers)
        await _answer(send, 200, json.dumps(payload).encode(),
                      [(BATCH_SIZE_HEADER, str(batch).encode())])

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.queue = asyncio.Queue()
                asyncio.get_running_loop().create_task(self._batches())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _embed(self, url: str):
        """(vector, batch size) of one image, or the exception that refused it."""
        from raysight.engines.embed import EmbedRequest
        from raysight.errors import RaysightError

        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self.prepare_pool, self.engine.preprocess,
                                                  EmbedRequest(image=url))
        except RaysightError as exc:
            return exc
        future = loop.create_future()
        self.queue.put_nowait((prepared, future))
        return await future

    async def _batches(self) -> None:
        """Whenever the model is free: take everything queued (up to the max), run it."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            items = [prepared for prepared, _ in batch]
            try:
                results = await loop.run_in_executor(self.model_thread,
                                                     self.engine.infer_and_postprocess, items)
            except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
                for _, future in batch:
                    future.set_result(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result if isinstance(result, Exception)
                                  else (result.vector, len(batch)))


async def _answer(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server",
                                     description=__doc__)
    parser.add_argument("--model", required=True, help="model folder (an embedding model)")
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    app = ReferenceServer(args.model, args.max_batch_size)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
