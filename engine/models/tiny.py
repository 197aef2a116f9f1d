"""Tiny randomly initialised DINOv2, SAM, SAM 2 and EdgeTAM, written to disk so tests go through the real loaders.

They have the real classes and interfaces but random weights: good for shapes, plumbing and caching,
meaningless as results. Everything built here is labelled `random_weights=True` by the loaders' callers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.sam import build_sam

TINY_DINO_DIR = "dinov2-tiny-random"
TINY_SAM_FILE = "sam_tiny_random.pth"
TINY_SAM2_DIRS = {"sam2": "sam2-tiny-random", "edgetam": "edgetam-tiny-random"}


def tiny_dino_config(registers: bool = True):
    """A 2-layer, 32-wide DINOv2 (optionally with 2 register tokens), patch 14."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  patch_size=14, image_size=56)
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=2, **common)
    return Dinov2Config(**common)


def save_tiny_dino(folder: str | Path, registers: bool = True, seed: int = 0) -> Path:
    """Write config + safetensors with `save_pretrained`; returns the folder."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep the service's stderr log free of progress bars
    torch.manual_seed(seed)
    cls = Dinov2WithRegistersModel if registers else Dinov2Model
    model = cls(tiny_dino_config(registers))
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def save_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """Write a state_dict checkpoint of the 'tiny' SAM spec (256 px input, 16x16 embedding grid)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_sam("tiny").state_dict(), path)
    return path


def tiny_sam2_config(kind: str = "sam2"):
    """A 256 px SAM 2 (Hiera, 5 blocks) or EdgeTAM (a 4-block RepViT from timm): 16x16 embedding grid,
    the published 256-wide prompt encoder and a one-layer mask decoder."""
    from transformers import EdgeTamConfig, Sam2Config

    sizes = [[64, 64], [32, 32], [16, 16]]  # stride 4, 8, 16 feature maps of a 256 px input
    prompt = dict(image_size=256)
    decoder = dict(mlp_dim=64, num_hidden_layers=1, iou_head_hidden_dim=32)
    if kind == "sam2":
        backbone = dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1, image_size=[256, 256],
                        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                        num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 4, 2],
                        global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4])
        vision = dict(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16], backbone_feature_sizes=sizes)
        return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    if kind == "edgetam":
        from transformers import TimmWrapperConfig

        backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
            "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3],
            "embed_dim": (8, 16, 32, 64), "depth": (1, 1, 1, 1)})
        vision = dict(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=sizes)
        return EdgeTamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    raise ValueError(f"unknown tiny SAM 2 kind {kind!r}")


def save_tiny_sam2(folder: str | Path, kind: str = "sam2", seed: int = 0) -> Path:
    """Write a tiny SAM 2 / EdgeTAM (config + safetensors) with `save_pretrained`; returns the folder."""
    from transformers import EdgeTamModel, Sam2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = (Sam2Model if kind == "sam2" else EdgeTamModel)(tiny_sam2_config(kind))
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def ensure_tiny_models(folder: str | Path, sam_kind: str = "sam") -> tuple[Path, Path]:
    """The tiny DINOv2 folder and SAM checkpoint (`sam_kind` "sam": a state_dict file; "sam2"/"edgetam": a
    transformers folder) under `folder`, written once (deterministic seed)."""
    folder = Path(folder)
    dino_dir = folder / TINY_DINO_DIR
    if not (dino_dir / "config.json").is_file():
        save_tiny_dino(dino_dir)
    if sam_kind != "sam":
        sam_dir = folder / TINY_SAM2_DIRS[sam_kind]
        if not (sam_dir / "model.safetensors").is_file():
            save_tiny_sam2(sam_dir, sam_kind)
        return dino_dir, sam_dir
    sam_path = folder / TINY_SAM_FILE
    if not sam_path.is_file():
        tmp = save_tiny_sam(sam_path.with_suffix(".tmp"))
        tmp.replace(sam_path)
    return dino_dir, sam_path
