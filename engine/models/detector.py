"""Open-vocabulary box detector (Grounding DINO through transformers): a phrase -> boxes in an image.

Why Grounding DINO tiny: Apache-2.0, in transformers, 172 M parameters, and it grounds noun phrases
("wing", "handle") rather than a fixed class list. Weights live in the Hugging Face cache like DINOv2
(engine.models.store): fetched on first use unless offline (BSB_OFFLINE / HF_HUB_OFFLINE), never
replaced by random weights. The `tiny` profile writes a tiny random detector in the real format
(config, safetensors, tokenizer, processor) and loads it through the same loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.errors import BsbError, ImageError, ModelMissingError
from engine.models.store import is_offline, models_dir

DETECTOR_IDS = {"gpu": "IDEA-Research/grounding-dino-tiny", "cpu": "IDEA-Research/grounding-dino-tiny",
                "tiny": "grounding-dino-tiny-random"}
HUB_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
FETCH_HINT = "python -m engine fetch-detector"
TINY_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "the", "of", "handle", "wing", "body",
              "engine", "rudder", "stabilizer", "leg", "head", "tail", "seat", "lid")


class TextDetector:
    """`detect(images, phrase)` -> per image (boxes (n, 4) x0 y0 x1 y1 pixels, scores (n,))."""

    def __init__(self, model: torch.nn.Module, processor, device: torch.device, model_id: str,
                 random_weights: bool = False, box_threshold: float = 0.3, text_threshold: float = 0.25) -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.model_id = model_id
        self.random_weights = random_weights
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    @staticmethod
    def prompt(phrase: str) -> str:
        """Grounding DINO's text format: lower case, ending with a period."""
        phrase = " ".join(str(phrase).lower().split()).rstrip(".")
        if not phrase:
            raise BsbError("the part name is empty; type a name such as 'handle'", "bad_request")
        return phrase + "."

    @torch.inference_mode()
    def detect(self, images: np.ndarray, phrase: str) -> list[tuple[np.ndarray, np.ndarray]]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or 0 in images.shape:
            raise ImageError(f"expected (B, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        text = self.prompt(phrase)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for image in images:
            inputs = self.processor(images=[image], text=[text], return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            result = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
                target_sizes=[image.shape[:2]])[0]
            boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
            h, w = image.shape[:2]
            boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append((boxes[keep], result["scores"].float().cpu().numpy()[keep].astype(np.float32)))
        return out


def load_detector(source: str | Path, device: torch.device | str = "cpu", offline: bool = False,
                  random_weights: bool = False) -> TextDetector:
    """A zero-shot detector (hub id or folder) and its processor; missing weights raise ModelMissingError."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(str(source), local_files_only=offline)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ModelMissingError(f"detector weights {source} are not available ({str(exc).splitlines()[0]}); "
                                f"fetch them with `{FETCH_HINT}`") from None
    if getattr(model.config, "model_type", "") not in ("grounding-dino", "mm-grounding-dino"):
        raise BsbError(f"{source} is a {model.config.model_type!r} model, not Grounding DINO", "bad_request")
    return TextDetector(model, processor, torch.device(device), str(source), random_weights)


def detector_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("config.json", "model.safetensors"))


def fetch_detector(profile: str, offline: bool | None = None) -> str:
    """Make the profile's detector available locally; returns its hub id (or folder for `tiny`)."""
    hub_id = _id(profile)
    if profile == "tiny" or detector_cached(hub_id):
        return hub_id
    if is_offline(offline):
        raise ModelMissingError(f"offline mode (BSB_OFFLINE/HF_HUB_OFFLINE) is on and the detector {hub_id} is "
                                f"missing; run `{FETCH_HINT}` on a connected machine")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(hub_id, allow_patterns=list(HUB_FILES))
    except Exception as exc:  # hub errors come in many classes; all mean "could not fetch"
        raise ModelMissingError(f"could not download {hub_id} from Hugging Face ({type(exc).__name__}); "
                                f"check the connection and retry `{FETCH_HINT}`") from None
    return hub_id


def load_profile_detector(profile: str, folder: str | Path | None = None, device: torch.device | str = "cpu",
                          offline: bool | None = None) -> TextDetector:
    """The profile's detector on `device` (fetched unless offline; `tiny`: random weights, built once)."""
    if profile == "tiny":
        return load_detector(ensure_tiny_detector(models_dir(folder) / "tiny" / DETECTOR_IDS["tiny"]), device,
                             offline=True, random_weights=True)
    return load_detector(fetch_detector(profile, offline), device, offline=True)


def _id(profile: str) -> str:
    try:
        return DETECTOR_IDS[profile]
    except KeyError:
        raise BsbError(f"no detector for profile {profile!r}; choose one of {', '.join(DETECTOR_IDS)}",
                       "bad_request") from None


def save_tiny_detector(folder: str | Path, seed: int = 0) -> Path:
    """A ~170k-parameter random Grounding DINO with a real BERT word-piece tokenizer, via save_pretrained."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=4, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=swin, text_config=bert, num_queries=20, encoder_layers=1,
                                 decoder_layers=2, d_model=32, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
                                 decoder_n_points=2, max_text_len=32)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    # 128 px: the last of four feature levels stays above 1x1 (GroupNorm needs more than one value)
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 160})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def ensure_tiny_detector(folder: str | Path) -> Path:
    """The tiny detector folder, written once (deterministic seed)."""
    import shutil

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        for stale in (tmp, folder):  # a half-written folder from an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        save_tiny_detector(tmp)
        tmp.replace(folder)
    return folder
