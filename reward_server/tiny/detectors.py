"""Tiny Grounding DINO and OWLv2 checkpoints (random weights) and the rewards that use them.

Random detectors find random boxes: they prove the transformers path runs end to end, not that
subjects are found. Logic tests use the ``fixed`` detector on known boxes.
"""

from __future__ import annotations

from pathlib import Path

from reward_server.tiny._tokenizers import bert_tokenizer, clip_tokenizer

IMAGE_SIZE = 64


def write_grounding_dino(path: Path) -> Path:
    """Swin (2 stages) + BERT (1 layer) Grounding DINO; ``decoder_layers`` >= 2 (1 breaks weight tying)."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = bert_tokenizer()
    backbone = SwinConfig(
        image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=4,
        out_features=["stage1", "stage2"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=256,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, use_timm_backbone=False, d_model=32, encoder_layers=1,
        decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=20, num_feature_levels=2, encoder_n_points=2, decoder_n_points=2, max_text_len=256,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def write_owlv2(path: Path) -> Path:
    """OWLv2 with 1-layer towers, 64 px images in 16 px patches (16 candidate boxes)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = clip_tokenizer()
    vocab = tokenizer.get_vocab()
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length, **ids,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE_SIZE,
            patch_size=16,
        ),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config)
    # Random box-head weights throw boxes far outside the image; with the last layer zeroed each
    # patch predicts its own grid cell (OWLv2's box bias), so the tiny detector's boxes are sane.
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    model.save_pretrained(path)
    image_processor = Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def write(root: Path) -> dict[str, dict]:
    """Write both detectors; the subject rewards embed with the tiny DINO/DINOv2 of ``tiny/vision.py``."""
    from reward_server.tiny.vision import DINO_DIR, DINOV2_DIR

    gd, owl = write_grounding_dino(root / "grounding-dino"), write_owlv2(root / "owlv2")
    batching = {"device": "cpu", "max_batch_size": 16, "max_wait_ms": 2}
    return {
        "subject": {
            "type": "subject_consistency",
            "model": str(root / DINO_DIR),
            **batching,
            "options": {"detector": {"kind": "grounding_dino", "model": str(gd)}, "embedder": "dino"},
        },
        # the paper's protocol (whole-image fallback), reported beside ours by `psr bench score`
        "subject_paper": {
            "type": "subject_consistency",
            "model": str(root / DINO_DIR),
            **batching,
            "options": {"detector": {"kind": "grounding_dino", "model": str(gd)}, "embedder": "dino",
                        "paper_fallback": True},
        },
        "subject_owl": {
            "type": "subject_consistency",
            "model": str(root / DINOV2_DIR),
            **batching,
            "options": {"detector": {"kind": "owlv2", "model": str(owl)}, "embedder": "dinov2"},
        },
        "position": {"type": "position", **batching, "options": {"detector": {"kind": "grounding_dino", "model": str(gd)}}},
    }
