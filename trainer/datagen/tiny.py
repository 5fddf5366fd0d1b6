"""Tiny models ``psr datagen`` needs beyond the reward models, and a ready ``DIR/datagen.yaml``.

``psr make-tiny DIR`` calls ``write_tiny_datagen``: a tiny random causal LM with an offline
byte-level tokenizer and chat template (``DIR/lm``), a tiny text-to-image ``FluxPipeline``
(``DIR/t2i``), and a config that uses them with the other tiny models of ``DIR`` (generator,
Grounding DINO, Qwen2.5-VL) and the ``aesthetic`` / ``dino_i`` rewards of ``DIR/rewards.yaml``.

Random models write garbage and find random boxes, so the tiny config makes kept items with
``writer.kind: template`` and ``caption.kind: none`` (deterministic text, no language model), samples every task equally
(a few items show them all), draws 32 px images,
keeps the detector's best box per category (``max_per_category: 1``, thresholds 0) and sets the
filter thresholds where random scores pass. ``--set writer.kind=transformers`` (or
``caption.kind=transformers``) runs the tiny LM / VLM instead: their answers are recorded as
``unparseable`` drops, which is what a real pipeline does with garbage.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LM_DIR, T2I_DIR, CONFIG_NAME = "lm", "t2i", "datagen.yaml"


def write_tiny_lm(path: Path) -> Path:
    """A Qwen2-style causal LM (hidden 32, 2 layers) with the tiny byte-level Qwen tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reward_server.tiny._tokenizers import qwen_tokenizer
    from reward_server.tiny.judge import CHAT_TEMPLATE

    tokenizer = qwen_tokenizer(model_max_length=2048)
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"], tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(server: str = "http://127.0.0.1:8000") -> dict:
    """The tiny datagen config; model paths are relative to the folder it is written in."""
    return {
        "seed": 0,
        "items": 8,
        "categories": "objects365",
        "tasks": {task: 1.0 for task in ("attribute", "action", "background", "position", "complex", "three", "four")},
        "writer": {"kind": "template", "model": LM_DIR, "device": "cpu", "max_new_tokens": 24, "temperature": 0.0},
        "t2i": {"model": T2I_DIR, "steps": 4, "size": 32, "guidance_scale": 3.5, "batch_size": 4, "device": "cpu",
                "call_kwargs": {"max_sequence_length": 32}},
        "detect": {"detector": {"kind": "grounding_dino", "model": "grounding-dino", "max_per_category": 1,
                                "box_threshold": 0.0, "text_threshold": 0.0},
                   "min_box_area": 0.0, "crop_margin": 0.5, "device": "cpu"},
        "references": {"model": "generator", "steps": 4, "size": 32, "guidance_scale": 1.0, "batch_size": 8,
                       "device": "cpu"},
        "edit": {"model": "generator", "steps": 4, "size": 32, "guidance_scale": 1.0,
                 "batch_size": 4, "device": "cpu"},
        "caption": {"kind": "none", "model": "qwen2_5_vl", "device": "cpu", "max_new_tokens": 24},
        "filters": {"server": server, "aesthetic_reward": "aesthetic", "aesthetic_floor": -1000.0,
                    "identity_reward": "dino_i", "identity_floor": -1.0, "copy_paste_ceiling": 0.9999},
        "contact_sheet": {"items": 8, "thumb": 96},
        "cpu_threads": 1,  # tiny models: thread sync costs more than it saves
    }


def write_tiny_datagen(root: Path) -> Path:
    """Write ``root/lm``, ``root/t2i`` and ``root/datagen.yaml``; returns the config path."""
    from trainer.tiny import make_tiny_generator

    write_tiny_lm(root / LM_DIR)
    make_tiny_generator(root / T2I_DIR, seed=1, pipeline_class="FluxPipeline")
    path = root / CONFIG_NAME
    path.write_text(
        "# Written by `psr make-tiny`: psr datagen on the tiny random models of this folder (CPU).\n"
        "# Random models write garbage and find random boxes: text comes from templates (writer.kind: template,\n"
        "# caption.kind: none) and the filters are set where random scores pass. See trainer/datagen/tiny.py.\n"
        "#   psr serve --config rewards.yaml --rewards aesthetic,dino_i --port 8000 &\n"
        "#   psr datagen --config datagen.yaml --out data\n"
        + yaml.safe_dump(tiny_config(), sort_keys=False)
    )
    return path
