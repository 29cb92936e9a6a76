"""shapes-clip: a ~0.27M-parameter CLIPModel that matches shapes to their 12 captions.

Trained with CLIP's symmetric contrastive loss, with one change: a batch of 128 holds many
images of the same caption, so every same-caption pair counts as a positive (soft targets)
instead of only the diagonal.
"""

from __future__ import annotations

import math
from pathlib import Path

from raysight.builtin.train import (
    HELD_OUT_OFFSET,
    ShapePool,
    TrainSettings,
    describe_init,
    fit,
    save,
    warm_start,
)

# 64 px input: at 48 px with 8 px patches the smallest perturbed shapes (radius 0.15 of a
# 40 px canvas) span under two patches, and a 48 px stage stalled at 0.94 on that set.
SETTINGS = TrainSettings(steps=4000, lr=3e-3, warmup_steps=100, pool_size=8_000,
                         refresh_size=500, held_out_size=400, eval_every=1000, image_size=64)
# Continuing from a trained model (`--init`): a short run at a lower rate, a smaller pool.
FINETUNE = TrainSettings(steps=1000, lr=1e-3, warmup_steps=50, pool_size=8_000,
                         refresh_size=500, held_out_size=400, eval_every=400, image_size=64)


def build_processor(image_size: int):
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    from raysight.builtin.tokenization import build_clip_tokenizer

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer())


def build_model(tokenizer, image_size: int):
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            # The text tower pools at the first eos token, so these must be the tokenizer's.
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**tower, image_size=image_size, patch_size=8),
        projection_dim=64,
    )
    return CLIPModel(config)


def _embed_captions(model, captions):
    import torch.nn.functional as F

    return F.normalize(model.get_text_features(**captions).pooler_output, dim=-1)


def _embed_images(model, pixel_values):
    import torch.nn.functional as F

    return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


def train(out: Path, settings: TrainSettings, init: Path | None = None) -> dict[str, float]:
    """Train shapes-clip with `settings` and save it (model + processor) to `out`.

    With `init`, training continues from the model saved in that folder.
    """
    import torch
    import torch.nn.functional as F

    from raysight.shapes import ALL_CAPTIONS

    torch.manual_seed(settings.seed)
    processor = build_processor(settings.image_size)
    model = build_model(processor.tokenizer, settings.image_size)
    if init is not None:
        warm_start(model, init)
    started_from = describe_init(init)
    print(f"shapes-clip: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    pool = ShapePool(processor.image_processor, settings.pool_size, settings.seed)
    held_out = ShapePool(
        processor.image_processor, settings.held_out_size, settings.seed + HELD_OUT_OFFSET
    )
    captions = processor.tokenizer(list(ALL_CAPTIONS), padding=True, return_tensors="pt")
    max_scale = math.log(100.0)  # CLIP's cap on the softmax temperature
    symmetries = torch.Generator().manual_seed(settings.seed + 2)

    def batch_loss(batch):
        labels = pool.caption_index[batch]
        images = _embed_images(model, pool.augmented(batch, symmetries))
        # Only 12 distinct captions exist: embed them once and gather one per image.
        texts = _embed_captions(model, captions)[labels]
        logits = model.logit_scale.clamp(max=max_scale).exp() * images @ texts.T
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    def evaluate() -> dict[str, float]:
        images = _embed_images(model, held_out.pixel_values)
        similarity = images @ _embed_captions(model, captions).T
        truth = held_out.caption_index
        zero_shot = (similarity.argmax(dim=1) == truth).float().mean().item()
        # Text -> image: the best image for each caption must show that caption.
        retrieval = (truth[similarity.argmax(dim=0)] == torch.arange(len(ALL_CAPTIONS))).float()
        return {"accuracy": zero_shot, "retrieval@1": retrieval.mean().item()}

    scores = fit(model, pool, settings, batch_loss, evaluate)
    with torch.no_grad():
        model.logit_scale.clamp_(max=max_scale)
    save(model, processor, out, settings, scores, started_from)
    return scores
