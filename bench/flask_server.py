"""The usual hand-written server, as the baseline: Flask, a ThreadPoolExecutor, one forward
(or one ``generate``) per request, transformers called directly, the same model folder.

    python -m bench.flask_server --model DIR --task embed|generate --port 8100

It answers the same request shapes as raysight (``/v1/embeddings`` with a data-URL image,
``/v1/chat/completions`` with one image part), so one load generator drives both.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def _image(url: str):
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1] if url.startswith("data:") else url)
    return Image.open(io.BytesIO(data)).convert("RGB")


class EmbedHandler:
    """CLIP image embeddings: processor, get_image_features, L2-normalise."""

    def __init__(self, folder: str):
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def __call__(self, body: dict) -> dict:
        import torch

        images = [_image(url) for url in body["input"]]
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        vectors = torch.nn.functional.normalize(features, dim=-1).tolist()
        return {"object": "list", "model": body.get("model"),
                "data": [{"object": "embedding", "index": i, "embedding": v}
                         for i, v in enumerate(vectors)]}


class ChatHandler:
    """Qwen2-VL chat: chat template, processor, greedy generate, decode."""

    def __init__(self, folder: str):
        from transformers import AutoModelForImageTextToText

        from raysight.families.qwen2_vl import Qwen2VLImageOnlyProcessor  # no torchvision here

        self.processor = Qwen2VLImageOnlyProcessor.from_pretrained(folder)
        self.model = AutoModelForImageTextToText.from_pretrained(folder).eval()

    def __call__(self, body: dict) -> dict:
        import torch

        content, images = [], []
        for part in body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                images.append(_image(part["image_url"]["url"]))
                content.append({"type": "image"})
            else:
                content.append(part)
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt")
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=body.get("max_tokens", 16),
                                         do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:]
        eos = self.model.generation_config.eos_token_id
        tokens = [t for t in new.tolist() if t != eos]
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        return {"object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": int(inputs["input_ids"].shape[1]),
                          "completion_tokens": len(tokens),
                          "total_tokens": int(inputs["input_ids"].shape[1]) + len(tokens)}}


def build_app(handler, workers: int):
    from flask import Flask, jsonify, request

    app = Flask("bench-flask")
    pool = ThreadPoolExecutor(max_workers=workers)

    def answer():
        return jsonify(pool.submit(handler, request.get_json()).result())

    app.add_url_rule("/v1/embeddings", "embeddings", answer, methods=["POST"])
    app.add_url_rule("/v1/chat/completions", "chat", answer, methods=["POST"])
    app.add_url_rule("/healthz", "health", lambda: "ok")
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flask_server", description=__doc__)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--task", choices=["embed", "generate"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="model calls running at once (default: one per core)")
    args = parser.parse_args(argv)
    from werkzeug.serving import make_server

    handler = EmbedHandler(args.model) if args.task == "embed" else ChatHandler(args.model)
    server = make_server("127.0.0.1", args.port, build_app(handler, args.workers), threaded=True)
    print(f"flask baseline on :{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
