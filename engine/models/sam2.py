"""SAM 2.1 and EdgeTAM (Hugging Face transformers) behind SamSegmenter's interface.

Why these: SAM 2.1-tiny costs ~290 GFLOPs per 1024^2 view against ~970 for SAM ViT-B, and EdgeTAM less
still, so a CPU preparation can afford many more SAM views. Both models share one image path in
transformers (`get_image_embeddings`, prompt encoder, mask decoder), so one class serves both.

Frames (pure functions below, tested on their own):
- SAM 2 stretches every image to an S x S square (S = 1024 for the published models); there is no
  padding, so the embedding grid always covers the whole image (`valid_grid` = (g, g)).
- A point u (ARCHITECTURE's frame: pixel i spans [i, i+1)) maps to `u * S / size - 0.5`, because the prompt
  encoder adds 0.5 to every coordinate; a click at a pixel centre reaches SAM 2 as that pixel's index.
- The low-resolution logits (4g x 4g) cover the same square, so they come back to H x W by one bilinear
  resize (align_corners=False), which neither shifts nor flips them.

The prompt state of one image is more than the 256-channel embedding: SAM 2's mask decoder also adds
stride-4 and stride-8 features (32 and 64 channels). `encode` packs all three into ONE tensor so that the
pipeline can cache and pass it around like a SAM 1 embedding: shape (256, 4g, g), rows [0, g) the image
embedding (what `valid_grid` addresses, what the SAM field distils after the pipeline's crop), rows
[g, 2g) the stride-8 features and rows [2g, 4g) the stride-4 features, both pixel-unshuffled to g x g.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BsbError, ModelMissingError
from engine.models import autocast
from engine.models.sam import CachedImageSegmenter, MaskSet, _check_images, _prompt_count
from engine.models.prompt_decoder import Sam2Image, decode_sam2, sam2_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOGIT_CLAMP = 32.0  # SAM 2's image predictor clamps returned logits so they are safe to feed back


def to_model_frame(xy: torch.Tensor, image_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Pixel coordinates (..., 2) x y in an H x W image -> the coordinates SAM 2's prompt encoder expects."""
    H, W = image_hw
    return xy * torch.tensor([size / W, size / H], dtype=xy.dtype) - 0.5


def logits_to_image(logits: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """(..., 4g, 4g) low-resolution logits over the stretched square -> (..., H, W) logits on the image."""
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:])
    up = F.interpolate(flat, size=tuple(image_hw), mode="bilinear", align_corners=False)
    return up.reshape(*lead, *image_hw)


def pack_state(s0: torch.Tensor, s1: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """(B,C/8,4g,4g), (B,C/4,2g,2g), (B,C,g,g) -> (B, C, 4g, g): the embedding on top (see module doc)."""
    B, C, g, _ = embedding.shape
    s1 = F.pixel_unshuffle(s1, 2)  # (B, C, g, g)
    s0 = F.pixel_unshuffle(s0, 4).reshape(B, 2, C, g, g).transpose(1, 2).reshape(B, C, 2 * g, g)
    return torch.cat([embedding, s1, s0], dim=2)


def unpack_state(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `pack_state`: (B, C, 4g, g) -> s0, s1, embedding."""
    B, C, rows, g = state.shape
    embedding, s1, s0 = state[:, :, :g], state[:, :, g:2 * g], state[:, :, 2 * g:]
    s1 = F.pixel_shuffle(s1, 2)
    s0 = F.pixel_shuffle(s0.reshape(B, C, 2, g, g).transpose(1, 2).reshape(B, 2 * C, g, g), 4)
    return s0, s1, embedding


class Sam2Segmenter(CachedImageSegmenter):
    """A transformers Sam2Model / EdgeTamModel with SamSegmenter's methods (encode, set_image, predict...)."""

    dim = 256

    def __init__(self, model: torch.nn.Module, model_id: str, device: torch.device, random_weights: bool = False,
                 cache_size: int = 4, encode_batch: int = 2, prompt_batch: int | None = None) -> None:
        prompt_cfg = model.config.prompt_encoder_config
        if int(prompt_cfg.hidden_size) != self.dim:
            raise BsbError(f"{model_id}: a {prompt_cfg.hidden_size}-wide SAM 2 decoder is not supported "
                           f"(expects {self.dim})", "bad_request")
        self.model = model.to(device).eval()
        self.model_id = model_id
        self.device = torch.device(device)
        self.random_weights = random_weights
        self.img_size = int(prompt_cfg.image_size)
        self.grid = self.img_size // int(prompt_cfg.patch_size)
        self.cache_size = cache_size
        self.encode_batch = encode_batch
        # each prompt materialises (32, 4g, 4g) decoder features; on a CPU, 4 prompts per decoder call keep
        # its buffers small enough for the allocator to reuse and cache-resident: about a third less CPU time
        # per prompt than 32 (iSeg click data on a 2-core x86 VM, same masks); a GPU wants large batches
        self.prompt_batch = prompt_batch or (4 if self.device.type == "cpu" else 32)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._decoder_image: Sam2Image | None = None  # the state's share of the decoder, on first use
        self._image_hw: tuple[int, int] | None = None
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    # ----- embeddings -------------------------------------------------------------------------
    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """Shape of one `encode` output (the packed prompt state), what `set_embedding` takes."""
        return (self.dim, 4 * self.grid, self.grid)

    def resized_hw(self, H: int, W: int) -> tuple[int, int]:
        """SAM 2 stretches every image to its square input."""
        return self.img_size, self.img_size

    def valid_grid(self, H: int, W: int) -> tuple[float, float]:
        """The image embedding's cells that cover the image: all of them (no padding); they are the
        top g rows of the packed state, so `emb[..., :rows, :cols]` crops exactly the embedding."""
        return float(self.grid), float(self.grid)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 256, 4g, g) float32 CPU packed prompt states (module docstring)."""
        images = _check_images(images)
        out = []
        size = (self.img_size, self.img_size)
        for start in range(0, len(images), self.encode_batch):
            x = torch.from_numpy(np.array(images[start:start + self.encode_batch], copy=True)).to(self.device)
            x = x.permute(0, 3, 1, 2).float()
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
                x = x.clamp(0, 255).round()  # the published processor resizes 8-bit images
            x = (x / 255.0 - self._mean) / self._std
            with autocast(self.device):
                s0, s1, emb = self.model.get_image_embeddings(x)
            out.append(pack_state(s0.float(), s1.float(), emb.float()).cpu())
        return torch.cat(out)

    def set_embedding(self, embedding: torch.Tensor | np.ndarray, image_hw: tuple[int, int]) -> None:
        """Prompt against a packed state (256, 4g, g) of an image of size (H, W)."""
        state = torch.as_tensor(embedding, dtype=torch.float32)
        if state.dim() == 3:
            state = state[None]
        if tuple(state.shape[1:]) != self.embedding_shape:
            raise BsbError(f"embedding shape {tuple(state.shape)} does not fit this SAM 2 "
                           f"(expects {self.embedding_shape})", "bad_request")
        self._state = tuple(t.to(self.device) for t in unpack_state(state))
        self._decoder_image = None
        self._image_hw = (int(image_hw[0]), int(image_hw[1]))

    # ----- prompting --------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True) -> MaskSet:
        """N prompts, as SamSegmenter.predict: points (N, P, 2) xy pixels with labels (N, P) (1 positive,
        0 negative, -1 padding), boxes (N, 4) x0 y0 x1 y1, mask_input (N, 1, 4g, 4g) logits of a MaskSet."""
        if self._state is None:
            raise BsbError("SAM has no image: call set_image or set_embedding before predict", "bad_request")
        hw = self._image_hw
        n = _prompt_count(points, boxes, mask_input)
        if points is not None:
            if labels is None:
                raise BsbError("points need labels (1 positive, 0 negative, -1 padding)", "bad_request")
            points = to_model_frame(torch.as_tensor(np.asarray(points), dtype=torch.float32).reshape(n, 1, -1, 2),
                                    hw, self.img_size)
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(n, 1, -1)
            if labels.shape[2] != points.shape[2]:
                raise BsbError(f"{labels.shape[2]} labels per prompt do not match {points.shape[2]} points",
                               "bad_request")
        if boxes is not None:
            corners = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(n, 1, 2, 2)
            boxes = to_model_frame(corners, hw, self.img_size).reshape(n, 1, 4)
        if mask_input is not None:
            mask_input = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32).reshape(
                n, 1, 4 * self.grid, 4 * self.grid)
        parts = []
        for s in range(0, n, self.prompt_batch):
            sl = slice(s, s + self.prompt_batch)
            b = len(range(n)[sl])
            with autocast(self.device):
                if mask_input is None:  # the image's share of the decoder computed once for the b prompts
                    if self._decoder_image is None:
                        self._decoder_image = sam2_image(self.model, list(self._state))
                    low, scores = decode_sam2(self.model, self._decoder_image,
                                               None if points is None else points[sl, 0].to(self.device),
                                               None if labels is None else labels[sl, 0].to(self.device),
                                               None if boxes is None else boxes[sl, 0].to(self.device), multimask)
                else:
                    out = self.model(
                        image_embeddings=[t.expand(b, -1, -1, -1) for t in self._state],  # one image, b prompts
                        input_points=None if points is None else points[sl].to(self.device),
                        input_labels=None if labels is None else labels[sl].to(self.device),
                        input_boxes=None if boxes is None else boxes[sl].to(self.device),
                        input_masks=mask_input[sl].to(self.device),
                        multimask_output=multimask,
                    )
                    low, scores = out.pred_masks[:, 0], out.iou_scores[:, 0]
            low = low.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)  # (b, K, 4g, 4g)
            masks = logits_to_image(low, hw) > 0.0
            parts.append((masks.cpu().numpy(), scores.float().cpu().numpy(), low.cpu().numpy()))
        return MaskSet(masks=np.concatenate([p[0] for p in parts]),
                       scores=np.concatenate([p[1] for p in parts]).astype(np.float32),
                       logits=np.concatenate([p[2] for p in parts]).astype(np.float32))


SAM2_MODEL_TYPES = ("sam2", "edgetam")


def load_sam2(source: str | Path, device: torch.device, offline: bool = False, fetch_hint: str = "",
              random_weights: bool = False) -> Sam2Segmenter:
    """Load a SAM 2.1 or EdgeTAM checkpoint in transformers' format (hub id or local folder)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr belongs to the service's log, not to loading bars
    hint = f"; fetch it with `{fetch_hint}`" if fetch_hint else ""
    try:
        cfg = AutoConfig.from_pretrained(str(source), local_files_only=offline)
        if cfg.model_type not in SAM2_MODEL_TYPES:
            raise BsbError(f"{source} is a {cfg.model_type!r} model, not SAM 2 or EdgeTAM", "bad_request")
        cls = _model_class(cfg.model_type)
        model = cls.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError) as exc:  # transformers' way of saying "not in the cache / not reachable"
        raise ModelMissingError(f"SAM 2 weights {source} are not available ({str(exc).splitlines()[0]}){hint}") from None
    return Sam2Segmenter(model, model_id=f"{cfg.model_type}:{source}", device=device, random_weights=random_weights)


def _model_class(model_type: str):
    if model_type == "sam2":
        from transformers import Sam2Model

        return Sam2Model
    try:
        import timm  # noqa: F401  (EdgeTAM's image encoder is a timm RepViT)
    except ImportError:
        raise BsbError("EdgeTAM needs the `timm` package: pip install timm", "bad_request") from None
    from transformers import EdgeTamModel

    return EdgeTamModel
