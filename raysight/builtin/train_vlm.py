"""shapes-vlm: a ~0.27M-parameter BLIP captioner that also answers two questions.

It learns the exact sequences BLIP's `generate` sees at inference: generate swaps the
processor's leading [CLS] for [DEC] and drops the trailing [SEP], then decodes until [SEP].
So each training row is ``[DEC] prompt-words answer-words [SEP]`` with the loss on the
answer and the closing [SEP]; with no prompt it is ``[DEC] caption [SEP]``.

Its vision tower starts from shapes-clip's (`raysight.builtin.transfer`) and is distilled
from it as it trains: a BLIP tower trained only through the decoder's cross-attention learnt
the training renderer's habits (0.89 on the perturbed set) where CLIP's contrastive tower
generalises (0.97), and the same tower shape at the same 64 px input lets one copy the other.
"""

from __future__ import annotations

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

# BLIP's text decoder is post-LayerNorm (BERT style): it learns faster at 1e-3 than at 3e-3.
# The vision tower starts trained (from shapes-clip) and moves at half that rate, held near
# CLIP's features by a distillation loss (the mean squared difference of every output token
# from CLIP's, weighted by DISTILL_WEIGHT) so that the caption loss cannot pull it back
# towards the training renderer's habits.
SETTINGS = TrainSettings(steps=600, lr=1e-3, warmup_steps=50, vision_lr_scale=0.5,
                         pool_size=8_000, refresh_size=500, held_out_size=400,
                         eval_every=600, image_size=64)
DISTILL_WEIGHT = 10.0
# Continuing from a trained model (`--init`): a short run at a lower rate, scored once at
# the end (the generate loop is slow).
FINETUNE = TrainSettings(steps=600, lr=5e-4, warmup_steps=50, vision_lr_scale=0.5,
                         pool_size=8_000, refresh_size=500, held_out_size=200,
                         eval_every=600, image_size=64)
MAX_NEW_TOKENS = 12


def prompts() -> dict[str, str]:
    """What the model is trained to answer: task name -> prompt ("" means no prompt)."""
    from raysight.builtin.tokenization import DESCRIBE_PROMPT
    from raysight.shapes import QUESTIONS

    return {"caption": "", "describe": DESCRIBE_PROMPT, **QUESTIONS}


def answer_for(task: str, label) -> str:
    """The expected answer to `task` for an image labelled `label`."""
    return {"shape": label.shape, "color": label.color}.get(task, label.caption)


def build_processor(image_size: int):
    from transformers import BlipImageProcessorPil, BlipProcessor

    from raysight.builtin.tokenization import build_blip_tokenizer

    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=build_blip_tokenizer())


def build_model(tokenizer, image_size: int):
    from transformers import BlipConfig, BlipForConditionalGeneration

    config = BlipConfig(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=8,
            # CLIP's activation, so that shapes-clip's tower can be copied in unchanged.
            hidden_act="quick_gelu",
            # BLIP's default (1e-10) starts the position embeddings at zero, which leaves the
            # model blind to shape for thousands of steps; 0.02 is CLIP's choice.
            initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            encoder_hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            # generate() starts from bos, stops at sep and pads with pad: the tokenizer's ids.
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        projection_dim=64,
    )
    return BlipForConditionalGeneration(config)


def training_rows(tokenizer):
    """Token ids, attention masks and loss labels for every (task, caption) pair.

    Returns tensors of shape [tasks, captions, length], right-padded.
    """
    import torch

    from raysight.shapes import ALL_CAPTIONS, COLORS, SHAPES, ShapeLabel

    labels = [ShapeLabel(shape, color) for color in COLORS for shape in SHAPES]
    assert [label.caption for label in labels] == list(ALL_CAPTIONS)
    rows = []
    for task, prompt in prompts().items():
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for label in labels:
            answer_ids = tokenizer(answer_for(task, label), add_special_tokens=False)["input_ids"]
            ids = [tokenizer.bos_token_id, *prompt_ids, *answer_ids, tokenizer.sep_token_id]
            targets = [-100] * (1 + len(prompt_ids)) + [*answer_ids, tokenizer.sep_token_id]
            rows.append((ids, targets))
    width = max(len(ids) for ids, _ in rows)
    pad = width - torch.tensor([len(ids) for ids, _ in rows])
    pad_id = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows])
    targets = torch.tensor([t + [-100] * (width - len(t)) for _, t in rows])
    mask = (torch.arange(width)[None, :] < (width - pad)[:, None]).long()
    shape = (len(prompts()), len(labels), width)
    return input_ids.view(shape), mask.view(shape), targets.view(shape)


def generate_answers(model, processor, images: list, prompt: str) -> list[str]:
    """Greedy answers under the engine's contract, for many images sharing one prompt."""
    if prompt:
        inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt")
        start = inputs["input_ids"].shape[1] - 1
    else:
        inputs = processor(images=images, return_tensors="pt")
        start = 1
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    decode = processor.tokenizer.decode
    return [decode(row[start:], skip_special_tokens=True).strip() for row in out]


def load_teacher(folder: Path):
    """shapes-clip's vision tower from `folder`, frozen, for initialisation and distillation."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(folder, local_files_only=True)
    tower = clip.vision_model.eval()
    for param in tower.parameters():
        param.requires_grad_(False)
    return tower


def train(out: Path, settings: TrainSettings, init: Path | None = None,
          teacher: Path | None = None) -> dict[str, float]:
    """Train shapes-vlm with `settings` and save it (model + processor) to `out`.

    `teacher` is the shapes-clip folder whose vision tower the captioner's starts from and
    is distilled from (default: the shipped one). With `init`, training continues from the
    model saved in that folder instead of starting from the teacher's tower.
    """
    import torch
    import torch.nn.functional as F

    from raysight.builtin import BUILTIN_MODELS
    from raysight.builtin.train import draw_training_set
    from raysight.builtin.transfer import clip_vision_into_blip

    torch.manual_seed(settings.seed)
    processor = build_processor(settings.image_size)
    model = build_model(processor.tokenizer, settings.image_size)
    teacher = teacher or BUILTIN_MODELS["shapes-clip"]
    clip_tower = load_teacher(teacher)
    pool = ShapePool(processor.image_processor, settings.pool_size, settings.seed)
    if init is not None:
        warm_start(model, init)
    else:
        clip_vision_into_blip(clip_tower, model.vision_model, pool.pixel_values[:512])
    started_from = describe_init(init) or {"vision_tower": describe_init(teacher)}
    print(f"shapes-vlm: {sum(p.numel() for p in model.parameters()):,} parameters; vision "
          f"tower from {init or teacher}", flush=True)
    # Half the images: each is asked four things, by a slow generate loop.
    held_out = draw_training_set(settings.held_out_size // 2, settings.seed + HELD_OUT_OFFSET)
    input_ids, attention_mask, targets = training_rows(processor.tokenizer)
    n_tasks = input_ids.shape[0]
    task_sampler = torch.Generator().manual_seed(settings.seed + 1)
    symmetries = torch.Generator().manual_seed(settings.seed + 2)

    def batch_loss(batch):
        task = torch.randint(0, n_tasks, (len(batch),), generator=task_sampler)
        caption = pool.caption_index[batch]
        pixels = pool.augmented(batch, symmetries)
        patches = model.vision_model(pixel_values=pixels).last_hidden_state
        with torch.no_grad():
            # BLIP normalises every output token with post_layernorm; CLIP only its pooled one.
            wanted = clip_tower.post_layernorm(clip_tower(pixel_values=pixels).last_hidden_state)
        text = model.text_decoder(
            input_ids=input_ids[task, caption],
            attention_mask=attention_mask[task, caption],
            encoder_hidden_states=patches,
            labels=targets[task, caption],
            reduction="mean",
        )
        return text.loss + DISTILL_WEIGHT * F.mse_loss(patches, wanted)

    def evaluate() -> dict[str, float]:
        images = [image for image, _ in held_out]
        scores = {}
        for task, prompt in prompts().items():
            answers = generate_answers(model, processor, images, prompt)
            hits = sum(a == answer_for(task, label) for a, (_, label) in zip(answers, held_out))
            scores[task] = hits / len(held_out)
        return {"accuracy": min(scores.values()), **scores}

    scores = fit(model, pool, settings, batch_loss, evaluate)
    save(model, processor, out, settings, scores, started_from)
    return scores
