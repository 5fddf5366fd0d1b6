"""Tiny CLIP (model + offline BPE tokenizer) and a tiny LAION aesthetic head.

Writes ``ROOT/clip`` (a ``CLIPModel`` with its ``CLIPTokenizer``, loadable by
``from_pretrained``) and ``ROOT/aesthetic_head.safetensors`` plus ``ROOT/aesthetic_head.pth``
(the LAION MLP with the public state-dict keys, input size = the tiny projection dim).
"""

from __future__ import annotations

from pathlib import Path

CLIP_DIR = "clip"
AESTHETIC_HEAD = "aesthetic_head.safetensors"
AESTHETIC_HEAD_PTH = "aesthetic_head.pth"

# Words whose BPE merges the tiny vocabulary learns, so common prompts become few tokens.
_WORDS = (
    "a an the of on in and with to next left right above below dog cat cup hat toy "
    "red blue green sofa beach garden robot teddy bear wearing holding sitting two three backpack"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: all bytes (plain and word-final) plus merges for ``_WORDS``."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _WORDS.split():
        # Merge left to right: ("d","o") -> "do", ("do","g</w>") -> "dog</w>".
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in tokens:
                tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip(
    path: Path,
    image_size: int = 32,
    projection_dim: int = 32,
    hidden_size: int = 32,
    num_layers: int = 2,
    patch_size: int = 8,
) -> None:
    """Save a random ``CLIPModel`` (tiny by default; both towers ``num_layers`` deep, MLP
    2 x ``hidden_size`` wide) and its offline tokenizer under ``path``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab, merges = tiny_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    layers = {"hidden_size": hidden_size, "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers,
              "num_attention_heads": max(4, hidden_size // 64)}
    config = CLIPConfig(
        text_config={**layers, "vocab_size": len(vocab), "max_position_embeddings": 77, **special},
        vision_config={**layers, "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
    )
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)


def aesthetic_head_state(input_size: int) -> dict:
    """Random weights of the LAION aesthetic MLP, keyed like ``sac+logos+ava1-l14-linearMSE.pth``."""
    from reward_server.models.aesthetic_head import AestheticMLP

    return AestheticMLP(input_size).state_dict()


def write(root: Path) -> dict[str, dict]:
    import torch
    from safetensors.torch import save_file

    clip_path = root / CLIP_DIR
    write_clip(clip_path)
    head = aesthetic_head_state(32)
    save_file({k: v.contiguous() for k, v in head.items()}, root / AESTHETIC_HEAD)
    torch.save(head, root / AESTHETIC_HEAD_PTH)
    common = {"model": str(clip_path), "device": "cpu", "max_batch_size": 16, "max_wait_ms": 2}
    return {
        "clip_t": {"type": "clip_t", **common, "options": {"mode": "cosine"}},
        "aesthetic": {"type": "aesthetic", **common, "options": {"head": str(root / AESTHETIC_HEAD)}},
        "clip_i": {"type": "image_similarity", **common, "options": {"backbone": "clip"}},
    }
