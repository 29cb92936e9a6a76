"""Build randomly initialised models of real architectures, offline, into a folder.

Nothing here touches a model hub: tokenizers are trained on local text with the
`tokenizers` library, image processors and configs are built from their classes. Tests use
the tiny sizes (a second each, ~1 MB); the benchmarks use realistic sizes. The folders load
through the same `from_pretrained` path as any Hugging Face model.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The text the tokenizers learn from: licence texts every Debian system ships, plus a few
# words the tests' prompts use, so no run depends on a download.
_CORPUS_GLOB = "/usr/share/common-licenses/*"
_EXTRA_TEXT = (
    "describe the image . what shape is this ? what color is the shape ? "
    "a red circle a green square a blue triangle a yellow circle hello world photo of a cat"
)

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A Qwen2-VL style chat template: images become <|vision_start|><|image_pad|><|vision_end|>.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A LLaVA-1.5 style template: "USER: <image>\n... ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% else %}{{ message['role'] | upper }}: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _corpus() -> list[str]:
    lines = [_EXTRA_TEXT] * 20
    for path in sorted(glob.glob(_CORPUS_GLOB))[:12]:
        try:
            with open(path, encoding="utf-8", errors="ignore") as handle:
                lines.extend(handle.read().splitlines())
        except (IsADirectoryError, PermissionError):
            continue
    return lines


def _byte_level_tokenizer(vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE (GPT-2 / Qwen / CLIP family style) trained on local text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def _wordpiece_tokenizer(vocab_size: int, special_tokens: list[str]):
    """A lowercase WordPiece (BERT family style) trained on local text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


@dataclass(frozen=True)
class RandomModelSize:
    """The few numbers that set a random model's size."""

    hidden: int = 32
    layers: int = 2
    heads: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch: int = 8
    vocab: int = 600
    # Weights' std. The usual 0.02 makes tiny random models repeat one token whatever the
    # input; a larger spread makes outputs depend on the image and prompt, so tests can fail.
    init_std: float = 0.2
    # CLIP only: MLP width as a multiple of the hidden size (real ViTs use 4), and the
    # vision tower's heads when they differ from the text tower's.
    mlp_ratio: int = 2
    vision_heads: int | None = None


TINY = RandomModelSize()

# Realistic sizes for the benchmarks (`python -m bench`); random weights, built offline.
# CLIP ViT-B/32: the real towers' shapes; 129M parameters, not 151M, because the vocabulary
# learned from local text is smaller than CLIP's 49,408 tokens (the vision tower is 87.5M).
CLIP_VIT_B32 = RandomModelSize(
    hidden=512, layers=12, heads=8, vision_hidden=768, vision_layers=12, vision_heads=12,
    image_size=224, patch=32, vocab=49408, init_std=0.02, mlp_ratio=4,
)
# A Qwen2-VL-shaped chat model sized so one 16-token answer takes ~0.3 s on 2 CPU cores.
QWEN2_VL_BENCH = RandomModelSize(
    hidden=512, layers=8, heads=8, vision_hidden=384, vision_layers=6, image_size=224,
    patch=14, vocab=8000, init_std=0.02,
)
NAMED_SIZES = {"tiny": TINY, "clip-vit-b32": CLIP_VIT_B32, "qwen2-vl-bench": QWEN2_VL_BENCH}


def _qwen_tokenizer(size: RandomModelSize):
    from transformers import PreTrainedTokenizerFast

    raw = _byte_level_tokenizer(size.vocab, QWEN_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _build_qwen2_vl(folder: Path, size: RandomModelSize, version: str) -> None:
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from raysight.families.qwen2_vl import Qwen2VLImageOnlyProcessor

    tokenizer = _qwen_tokenizer(size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL}
    # Small pixel budget: a 32x32 image is 4 merged patches = 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=size.image_size * size.image_size // 4,
        max_pixels=size.image_size * size.image_size * 4,
        patch_size=size.patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    head_dim = size.hidden // size.heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.hidden * 2,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
        initializer_range=size.init_std,
    )
    if version == "2.5":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(
            depth=size.vision_layers,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_heads=size.heads,
            out_hidden_size=size.hidden,
            patch_size=size.patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=size.patch * 2 * 2,
            fullatt_block_indexes=[size.vision_layers - 1],
        )
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.hidden,
            mlp_ratio=2,
            num_heads=size.heads,
            patch_size=size.patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    processor.save_pretrained(folder)


def _build_llava(folder: Path, size: RandomModelSize) -> None:
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    raw = _byte_level_tokenizer(size.vocab, special)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in special}
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.heads,
            image_size=size.image_size,
            patch_size=size.patch,
            projection_dim=size.vision_hidden,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=size.hidden,
            intermediate_size=size.hidden * 2,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=4096,
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
            initializer_range=size.init_std,
        ),
        image_token_id=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(folder)
    num_patches = (size.image_size // size.patch) ** 2
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    assert num_patches > 0
    processor.save_pretrained(folder)


def _build_blip(folder: Path, size: RandomModelSize) -> None:
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    raw = _wordpiece_tokenizer(size.vocab, special)
    tokenizer = BertTokenizerFast(tokenizer_object=raw, bos_token="[DEC]", do_lower_case=True)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in special}
    config = BlipConfig(
        vision_config=dict(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.heads,
            image_size=size.image_size,
            patch_size=size.patch,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=size.hidden,
            intermediate_size=size.hidden * 2,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            encoder_hidden_size=size.vision_hidden,
            max_position_embeddings=512,
            bos_token_id=ids["[DEC]"],
            pad_token_id=ids["[PAD]"],
            sep_token_id=ids["[SEP]"],
            eos_token_id=ids["[SEP]"],
            initializer_range=size.init_std,
        ),
        projection_dim=size.hidden,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    image_processor = BlipImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _build_clip(folder: Path, size: RandomModelSize) -> None:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizerFast,
    )

    special = ["<|startoftext|>", "<|endoftext|>"]
    raw = _byte_level_tokenizer(size.vocab, special)
    tokenizer = _clip_tokenizer(raw)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in special}
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=size.hidden,
            intermediate_size=size.hidden * size.mlp_ratio,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            max_position_embeddings=77,
            bos_token_id=ids["<|startoftext|>"],
            eos_token_id=ids["<|endoftext|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * size.mlp_ratio,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_heads or size.heads,
            image_size=size.image_size,
            patch_size=size.patch,
        ),
        projection_dim=size.hidden,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    del CLIPTokenizerFast
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _clip_tokenizer(raw):
    """Wrap a byte-level BPE so every text is framed <|startoftext|> ... <|endoftext|>."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, raw.token_to_id(bos)), (eos, raw.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=eos,
        model_max_length=77,
    )


ARCHITECTURES: dict[str, Callable[[Path, RandomModelSize], None]] = {
    "qwen2-vl": lambda folder, size: _build_qwen2_vl(folder, size, "2"),
    "qwen2.5-vl": lambda folder, size: _build_qwen2_vl(folder, size, "2.5"),
    "llava": _build_llava,
    "blip": _build_blip,
    "clip": _build_clip,
}


def build_random_model(
    architecture: str, folder: str | Path, size: RandomModelSize = TINY
) -> Path:
    """Write a randomly initialised `architecture` model with its processor into `folder`."""
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r}; known: {known}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ARCHITECTURES[architecture](folder, size)
    return folder
