"""SAM behind one small class: image embeddings (a distillation teacher) and batched prompting.

Coordinates follow ARCHITECTURE (pixel i spans [i, i+1), centre i+0.5) in the frame of the image given to
`set_image`/`set_embedding`. segment-anything's prompt encoder adds 0.5 to every coordinate (it treats
inputs as pixel indices), so we map a point u to `u * resized/original - 0.5` ourselves: a click at a pixel
centre reaches SAM as exactly that pixel's index, as in the reference code.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from engine.errors import BsbError, ImageError, ModelMissingError
from engine.models import autocast
from engine.models.prompt_decoder import decode_sam1

PATCH = 16  # SAM's ViT patch size: the embedding grid is img_size / 16


@dataclass(frozen=True)
class SamSpec:
    """Architecture of one SAM variant (the published ones, and a tiny one for tests)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn: tuple[int, ...]
    img_size: int = 1024
    window_size: int = 14
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048


SAM_SPECS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    # Random-weight plumbing model: 16x16 embedding grid, same prompt/decoder interfaces.
    "tiny": SamSpec(32, 2, 2, (1,), img_size=256, window_size=4, decoder_depth=1, decoder_mlp_dim=64),
}


@dataclass
class MaskSet:
    """SAM's answer to N prompts. The 3 multimask outputs are NOT sorted by size (see masks.py)."""

    masks: np.ndarray  # (N, K, H, W) bool at the image's resolution (K = 3, or 1 without multimask)
    scores: np.ndarray  # (N, K) float32 predicted IoU
    logits: np.ndarray  # (N, K, 4g, 4g) float32 low-res logits (256x256 for real SAM), reusable as mask_input


def build_sam(model_type: str | SamSpec) -> Sam:
    """A randomly initialised SAM of a known architecture (weights come from `load_sam`)."""
    if isinstance(model_type, SamSpec):
        s = model_type
    elif model_type in SAM_SPECS:
        s = SAM_SPECS[model_type]
    else:
        raise BsbError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(SAM_SPECS)}", "bad_request")
    grid = s.img_size // PATCH
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=s.img_size, patch_size=PATCH, embed_dim=s.embed_dim, depth=s.depth, num_heads=s.num_heads,
            mlp_ratio=4, out_chans=256, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=s.window_size, global_attn_indexes=s.global_attn),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(s.img_size, s.img_size),
            mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=s.decoder_depth, embedding_dim=256, mlp_dim=s.decoder_mlp_dim,
                                          num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(model_type: str, checkpoint: str | Path, device: torch.device, fetch_hint: str = "",
             random_weights: bool = False) -> "SamSegmenter":
    """Build the architecture and load a state_dict checkpoint strictly (a wrong file is an error)."""
    checkpoint = Path(checkpoint)
    hint = f"; fetch it with `{fetch_hint}`" if fetch_hint else ""
    if not checkpoint.is_file():
        raise ModelMissingError(f"SAM checkpoint {checkpoint} is missing{hint}")
    sam = build_sam(model_type)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state, strict=True)
    except Exception as exc:  # unpickling/shape errors: the file is not this model's checkpoint
        raise ModelMissingError(
            f"SAM checkpoint {checkpoint} could not be loaded as {model_type} ({type(exc).__name__}); "
            f"delete it and fetch it again{hint}") from None
    model_id = f"sam:{model_type}:{checkpoint.name}:{checkpoint.stat().st_size}"
    return SamSegmenter(sam, model_id=model_id, device=device, random_weights=random_weights)


class CachedImageSegmenter:
    """What every SAM backend shares: an LRU of image embeddings behind `set_image`.

    Subclasses provide `model_id`, `cache_size`, `_cache` (an OrderedDict), `encode` (B images -> B
    embeddings) and `set_embedding`.
    """

    model_id: str
    cache_size: int
    _cache: "OrderedDict[str, torch.Tensor]"

    def set_image(self, rgb: np.ndarray) -> None:
        """Make `rgb` the image to prompt; its embedding is computed once per (content, model)."""
        rgb = _check_images(np.asarray(rgb)[None])[0]
        key = hashlib.sha256(self.model_id.encode() + str(rgb.shape).encode() + rgb.tobytes()).hexdigest()
        emb = self._cache.get(key)
        if emb is None:
            emb = self.encode(rgb[None])[0]
            self._cache[key] = emb  # a new key is already the most recent
        else:
            self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:  # evicting last: cache_size=0 just keeps nothing
            self._cache.popitem(last=False)
        self.set_embedding(emb, rgb.shape[:2])



class SamSegmenter(CachedImageSegmenter):
    """One SAM model on one device, with an LRU of image embeddings and a current image to prompt."""

    dim = 256

    def __init__(self, sam: Sam, model_id: str, device: torch.device, random_weights: bool = False,
                 cache_size: int = 4, encode_batch: int = 4, prompt_batch: int = 64) -> None:
        self.sam = sam.to(device).eval()
        self.model_id = model_id
        self.device = torch.device(device)
        self.random_weights = random_weights
        self.img_size = int(sam.image_encoder.img_size)
        self.grid = self.img_size // PATCH
        self.cache_size = cache_size
        self.encode_batch = encode_batch
        self.prompt_batch = prompt_batch
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._predictor = SamPredictor(self.sam)
        self._image_hw: tuple[int, int] | None = None

    # ----- embeddings -------------------------------------------------------------------------
    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """Shape of one `encode` output, what `set_embedding` takes."""
        return (256, self.grid, self.grid)

    def resized_hw(self, H: int, W: int) -> tuple[int, int]:
        """The (h, w) SAM resizes an H x W image to before padding bottom/right to a square."""
        return ResizeLongestSide.get_preprocess_shape(H, W, self.img_size)

    def valid_grid(self, H: int, W: int) -> tuple[float, float]:
        """How many embedding cells (rows, cols) the image spans; the rest is padding.

        Fractional when the image ends inside a cell; a square image spans the whole grid.
        Crop with `emb[..., :ceil(rows), :ceil(cols)]`.
        """
        h, w = self.resized_hw(H, W)
        return h / PATCH, w / PATCH

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 256, g, g) float32 CPU image embeddings (SAM's neck output)."""
        images = _check_images(images)
        out = []
        for start in range(0, len(images), self.encode_batch):
            x = torch.from_numpy(np.array(images[start:start + self.encode_batch], copy=True)).to(self.device)
            x = x.permute(0, 3, 1, 2).float()
            h, w = self.resized_hw(*images.shape[1:3])
            if (h, w) != tuple(x.shape[-2:]):
                x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
                x = x.clamp(0, 255).round()  # SAM was trained on 8-bit inputs
            x = self.sam.preprocess(x)  # normalise, pad bottom/right
            with autocast(self.device):
                emb = self.sam.image_encoder(x)
            out.append(emb.float().cpu())
        return torch.cat(out)

    def set_embedding(self, embedding: torch.Tensor | np.ndarray, image_hw: tuple[int, int]) -> None:
        """Prompt against a known embedding (256, g, g) of an image of size (H, W)."""
        emb = torch.as_tensor(embedding, dtype=torch.float32)
        if emb.dim() == 3:
            emb = emb[None]
        if tuple(emb.shape[1:]) != self.embedding_shape:
            raise BsbError(f"embedding shape {tuple(emb.shape)} does not fit this SAM "
                           f"(expects {self.embedding_shape})", "bad_request")
        H, W = int(image_hw[0]), int(image_hw[1])
        self._predictor.features = emb.to(self.device)
        self._predictor.original_size = (H, W)
        self._predictor.input_size = self.resized_hw(H, W)
        self._predictor.is_image_set = True
        self._image_hw = (H, W)

    # ----- prompting --------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True) -> MaskSet:
        """N prompts in batches through `SamPredictor.predict_torch`.

        points (N, P, 2) xy pixels and labels (N, P) (1 positive, 0 negative, -1 padding); boxes (N, 4)
        x0 y0 x1 y1 in the same pixel frame; mask_input (N, 1, 4g, 4g) logits from an earlier MaskSet.
        """
        if self._image_hw is None:
            raise BsbError("SAM has no image: call set_image or set_embedding before predict", "bad_request")
        H, W = self._image_hw
        h, w = self._predictor.input_size
        to_input = torch.tensor([w / W, h / H], dtype=torch.float32)
        n = _prompt_count(points, boxes, mask_input)
        if points is not None:
            points = torch.as_tensor(np.asarray(points), dtype=torch.float32).reshape(n, -1, 2) * to_input - 0.5
            if labels is None:
                raise BsbError("points need labels (1 positive, 0 negative, -1 padding)", "bad_request")
            labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(n, -1)
            if labels.shape[1] != points.shape[1]:
                raise BsbError(f"labels {tuple(labels.shape)} do not match points {tuple(points.shape)}",
                               "bad_request")
        if boxes is not None:
            boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(n, 4) * to_input.repeat(2) - 0.5
        if mask_input is not None:
            mask_input = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32).reshape(n, 1, *self._low_res)
        parts = []
        for s in range(0, n, self.prompt_batch):
            sl = slice(s, s + self.prompt_batch)
            with autocast(self.device):
                if mask_input is None:  # the image's share of the decoder computed once for the batch
                    logits, scores = decode_sam1(self.sam, self._predictor.features,
                                                 None if points is None else points[sl].to(self.device),
                                                 None if labels is None else labels[sl].to(self.device),
                                                 None if boxes is None else boxes[sl].to(self.device), multimask)
                    masks = self.sam.postprocess_masks(logits, self._predictor.input_size,
                                                       self._predictor.original_size) > self.sam.mask_threshold
                else:
                    masks, scores, logits = self._predictor.predict_torch(
                        point_coords=None if points is None else points[sl].to(self.device),
                        point_labels=None if labels is None else labels[sl].to(self.device),
                        boxes=None if boxes is None else boxes[sl].to(self.device),
                        mask_input=mask_input[sl].to(self.device),
                        multimask_output=multimask,
                    )
            parts.append((masks.cpu().numpy(), scores.float().cpu().numpy(), logits.float().cpu().numpy()))
        return MaskSet(masks=np.concatenate([p[0] for p in parts]),
                       scores=np.concatenate([p[1] for p in parts]).astype(np.float32),
                       logits=np.concatenate([p[2] for p in parts]).astype(np.float32))

    @property
    def _low_res(self) -> tuple[int, int]:
        return 4 * self.grid, 4 * self.grid


def _prompt_count(points, boxes, mask_input) -> int:
    for x in (points, boxes, mask_input):
        if x is not None:
            return int(np.asarray(x).shape[0])
    raise BsbError("a SAM prompt needs points, boxes or a mask", "bad_request")


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or 0 in images.shape:
        raise ImageError(f"expected (B, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    return np.ascontiguousarray(images)

