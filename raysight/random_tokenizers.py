"""Tokenizers for random models, trained offline on text every Debian system ships.

``raysight.random_models`` builds its models' tokenizers here: byte-level BPE (Qwen2-VL,
LLaVA, CLIP) and WordPiece (BLIP), with each family's special tokens and chat template.
"""

from __future__ import annotations

import glob

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


def byte_level_tokenizer(vocab_size: int, special_tokens: list[str]):
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


def wordpiece_tokenizer(vocab_size: int, special_tokens: list[str]):
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


def qwen_tokenizer(vocab_size: int):
    """A byte-level BPE with Qwen2-VL's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    raw = byte_level_tokenizer(vocab_size, QWEN_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def clip_tokenizer(raw):
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
