"""Offline tokenizers for the tiny models: small vocabularies built in code, no download.

Each returns a real transformers tokenizer that ``save_pretrained`` writes and ``AutoTokenizer``
/ ``AutoProcessor`` load back, so the tiny checkpoints exercise the real loading path.
"""

from __future__ import annotations

from collections.abc import Iterable

WORDS = ["a", "an", "the", "of", "photo", "dog", "cat", "cup", "hat", "person", "car", "bird", "bear", "backpack", "bowl", "toy", "clock", "vase", "shoe", "robot", "red", "blue", "green", "left", "right", "above", "below", "under", "next", "to", "on", "top", "image", "score"]


def bert_tokenizer(words: Iterable[str] = WORDS, model_max_length: int = 256):
    """A WordPiece ``BertTokenizer`` over special tokens, ``words``, punctuation and letters."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words, *"abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def clip_tokenizer(model_max_length: int = 16):
    """The tiny CLIP BPE of ``tiny/clip.py`` with a shorter context (OWLv2 text queries)."""
    from transformers import CLIPTokenizer

    from reward_server.tiny.clip import tiny_vocab_and_merges

    vocab, merges = tiny_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)


def qwen_tokenizer(model_max_length: int = 8192):
    """A byte-level ``Qwen2Tokenizer`` (every byte a token, so digits 0-9 are single tokens) with Qwen's specials."""
    from transformers import Qwen2Tokenizer

    from reward_server.tiny.clip import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for special in QWEN_SPECIALS:
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    return tokenizer
