"""The built-in models' tokenizers, written out here rather than downloaded.

Both know every word of the shape captions and questions as one token, and can still spell
any other word: the CLIP one falls back to single bytes, the BERT one to single letters.
"""

from __future__ import annotations

from raysight.shapes import ALL_CAPTIONS, QUESTIONS

DESCRIBE_PROMPT = "Describe the image."

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77

BLIP_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
BLIP_MAX_LENGTH = 128


def known_words() -> list[str]:
    """Every lower-case word (and punctuation mark) of the captions and prompts, in order."""
    text = " ".join([*ALL_CAPTIONS, *QUESTIONS.values(), DESCRIBE_PROMPT]).lower()
    for mark in "?.":
        text = text.replace(mark, f" {mark}")
    return list(dict.fromkeys(text.split()))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair-encode one word, CLIP style (its last symbol carries "</w>")."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = zip(symbols, symbols[1:])
        rank, at = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairs))
        if rank == len(ranks):  # no known merge left
            break
        symbols[at : at + 2] = [symbols[at] + symbols[at + 1]]
    return symbols


def build_clip_tokenizer():
    """A byte-level BPE CLIPTokenizer: 256 bytes, 256 word-final bytes, the known words.

    Merges are added word by word, always joining the first two symbols left, so earlier
    merges keep their priority and every known word ends up as a single token.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate([*alphabet, *(a + "</w>" for a in alphabet)])}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in known_words():
        while len(symbols := _bpe(word, ranks)) > 1:
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )


def build_blip_tokenizer():
    """A lower-case WordPiece BertTokenizer with BLIP's "[DEC]" decoder start token."""
    import string

    from transformers import BertTokenizer

    pieces = [
        *BLIP_SPECIAL,
        *known_words(),
        *string.ascii_lowercase,
        *(f"##{letter}" for letter in string.ascii_lowercase),
        *string.digits,
        *(f"##{digit}" for digit in string.digits),
        *string.punctuation,
    ]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    return BertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        bos_token="[DEC]",
        model_max_length=BLIP_MAX_LENGTH,
    )
