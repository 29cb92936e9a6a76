"""Build randomly initialised models of real architectures, offline, into a folder.

Nothing here touches a model hub: tokenizers are trained on local text
(``raysight.random_tokenizers``), image processors and configs are built from their classes.
Tests use the tiny sizes (a second each, ~1 MB); the benchmarks use realistic sizes. The
folders load through the same `from_pretrained` path as any Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from raysight.random_tokenizers import (LLAVA_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, QWEN_SPECIAL,
                                        byte_level_tokenizer, clip_tokenizer, qwen_tokenizer,
                                        wordpiece_tokenizer)

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


def _build_qwen2_vl(folder: Path, size: RandomModelSize, version: str) -> None:
    import torch
    from transformers import Qwen2VLImageProcessorPil

    from raysight.families.qwen2_vl import Qwen2VLImageOnlyProcessor

    tokenizer = qwen_tokenizer(size.vocab)
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
    raw = byte_level_tokenizer(size.vocab, special)
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
    raw = wordpiece_tokenizer(size.vocab, special)
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
    raw = byte_level_tokenizer(size.vocab, special)
    tokenizer = clip_tokenizer(raw)
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
