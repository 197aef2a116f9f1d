"""SAM's mask decoder for many point/box prompts on ONE image, with the prompt-independent work done once;
for SAM 2 / EdgeTAM (transformers) and SAM 1 (segment-anything), whose decoders are the same network.

Why: iSeg's training data (thousands of prompts per mesh) and every BSB click (one prompt per candidate)
decode many prompts per image, and both libraries' decoders repeat all of their image-side work for each
prompt (a copy of the 64 x 64 x 256 embedding, four 256 -> 128 projections of it per block). Here:
- the first block's image-side projections (keys and values the prompt tokens attend to, queries of the
  image-to-token attention) depend on the image only: they are computed once per call, and for SAM 2 once
  per image (`sam2_image`, with the image's share of the upscaling);
- where the image tokens differ per prompt, attention between the few prompt tokens (t <= 10, 8 heads)
  and the 4096 image tokens is reassociated so that no full-width projection of the image tokens is
  needed: softmax(q Wk X^T) (X Wv^T) = softmax((q Wk) X^T) X Wv^T (a softmax row sums to 1, so the value
  bias passes through), and o_proj(softmax(.) V) = softmax(.) (V Wo^T);
- SAM 2's upscaling runs as matmuls on token-major rows (`_sam2_masks`), with in-place adds and GELUs, only
  for the mask tokens asked for, and the CPU segmenter decodes 4 prompts per call: together about half
  the CPU time per prompt of the earlier shared decoder (bench/models.py --decoders).
Same numbers as the libraries' decoders up to float rounding (tests/test_sam2.py, tests/test_sam.py
compare them). Mask prompts (a dense embedding per prompt) take the libraries' own paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class _Layout:
    """Where each library keeps the same parts of the decoder."""

    norm: str  # prefix of a block's four layer norms
    final_norm: str
    first_mask_token: int  # output tokens: [object score (SAM 2 only)], IoU, masks


SAM2_LAYOUT = _Layout("layer_norm", "layer_norm_final_attn", 2)
SAM1_LAYOUT = _Layout("norm", "norm_final_attn", 1)


def _parts(attn) -> tuple[int, int, float, torch.nn.Linear]:
    """heads, head width, softmax scaling and output projection of either library's attention module."""
    heads = int(getattr(attn, "num_attention_heads", getattr(attn, "num_heads", 0)))
    d = attn.q_proj.out_features // heads
    out = attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj
    return heads, d, d ** -0.5, out


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, L, heads * d) -> (n, heads, L, d)."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _attend(attn, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Plain attention among prompt tokens (n, t, C): the self-attention, cheap as it is."""
    h, _, scaling, out = _parts(attn)
    q, k, v = (_split_heads(p(x), h) for p, x in ((attn.q_proj, queries), (attn.k_proj, keys), (attn.v_proj, values)))
    w = torch.softmax(q @ k.transpose(-1, -2) * scaling, dim=-1)
    return out((w @ v).transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1))


@dataclass(frozen=True)
class _FirstLayer:
    """The first block's projections of the image tokens, the same for every prompt: the keys and values
    the prompt tokens attend to and the queries of the image-to-token attention, split into heads."""

    keys: torch.Tensor  # (1, h, N, d)
    values: torch.Tensor  # (1, h, N, d)
    queries: torch.Tensor  # (1, h, d, N), transposed for the (n, h, t, N) scores


def _first_layer(layer, image: torch.Tensor, pos: torch.Tensor) -> _FirstLayer:
    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    h, h2 = _parts(to_image)[0], _parts(to_tokens)[0]
    keys_pos = image + pos
    return _FirstLayer(_split_heads(to_image.k_proj(keys_pos), h), _split_heads(to_image.v_proj(image), h),
                       _split_heads(to_tokens.q_proj(keys_pos), h2).transpose(-1, -2))


def _tokens_to_image(attn, queries: torch.Tensor, keys: torch.Tensor | None, values: torch.Tensor | None,
                     first: _FirstLayer | None = None) -> torch.Tensor:
    """`attn(query=queries, key=keys, value=values)` for queries (n, t, C) on per-prompt image tokens
    (n, N, C), or on the first block's image tokens projected once (`first`)."""
    h, d, scaling, o_proj = _parts(attn)
    n, t, c = queries.shape
    q = _split_heads(attn.q_proj(queries), h) * scaling  # (n, h, t, d), the softmax scaling on the few queries
    if first is not None:
        out = torch.softmax(q @ first.keys.transpose(-1, -2), dim=-1) @ first.values  # (n, h, t, d)
    else:  # per-prompt image tokens: (q Wk) against them, then their weighted mean through Wv
        # (the key bias adds q . bk to a whole row of scores: the softmax over image tokens ignores it)
        a = torch.einsum("nhtd,hdc->nhtc", q, attn.k_proj.weight.view(h, d, c))
        w = torch.softmax(a.reshape(n, h * t, c) @ keys.transpose(1, 2), dim=-1)
        mean = (w @ values).view(n, h, t, c)
        out = torch.einsum("nhtc,hdc->nhtd", mean, attn.v_proj.weight.view(h, d, c)) + attn.v_proj.bias.view(h, 1, d)
    return o_proj(out.transpose(1, 2).reshape(n, t, h * d))


def _image_to_tokens(attn, image: torch.Tensor | None, token_keys: torch.Tensor, token_values: torch.Tensor,
                     first: _FirstLayer | None = None) -> torch.Tensor:
    """`attn(query=image, key=token_keys, value=token_values)` for per-prompt image tokens (n, N, C), or the
    first block's (`first`), attending to prompt tokens (n, t, C). Returns (n, N, C).

    Scores are laid out (n, h, t, N) and the softmax runs over the t tokens (dim 2), so that it streams along
    the N image tokens: a softmax over a last dimension of t <= 10 costs ~10x more on a CPU."""
    h, d, scaling, o_proj = _parts(attn)
    n, t, c = token_keys.shape
    k = _split_heads(attn.k_proj(token_keys), h) * scaling  # (n, h, t, d)
    v = _split_heads(attn.v_proj(token_values), h)
    if first is not None:
        scores = k @ first.queries  # (n, h, t, N)
    else:  # k . (X Wq^T + bq) = (k Wq) X^T + k . bq, per head
        m = torch.einsum("nhtd,hdc->nhtc", k, attn.q_proj.weight.view(h, d, c)).reshape(n, h * t, c)
        bias = torch.einsum("nhtd,hd->nht", k, attn.q_proj.bias.view(h, d)).reshape(n, h * t, 1)
        scores = torch.baddbmm(bias, m, image.transpose(1, 2)).view(n, h, t, -1)
    w = torch.softmax(scores, dim=2).view(n, h * t, -1)  # (n, h t, N)
    vo = torch.einsum("nhtd,chd->nhtc", v, o_proj.weight.view(c, h, d)).reshape(n, h * t, c)
    return torch.baddbmm(o_proj.bias, w.transpose(1, 2), vo)


def _two_way(transformer, layout: _Layout, tokens: torch.Tensor, image: torch.Tensor, pos: torch.Tensor,
             first: _FirstLayer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer: prompt tokens (n, t, C), image tokens and their positions (1, N, C) ->
    the tokens (n, t, C) and the image tokens (n, N, C) after it. `first`: `_first_layer` of these image
    tokens, when kept from an earlier call on the same image."""
    queries, keys = tokens, image
    for i, layer in enumerate(transformer.layers):
        norm = [getattr(layer, f"{layout.norm}{j}") for j in range(1, 5)]
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + _attend(layer.self_attn, q, q, queries)
        queries = norm[0](queries)
        shared = (first or _first_layer(layer, image, pos)) if i == 0 else None
        keys_pos = None if shared is not None else keys + pos
        queries = norm[1](queries + _tokens_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pos,
                                                     keys, shared))
        queries = norm[2](queries + layer.mlp(queries))
        update = _image_to_tokens(layer.cross_attn_image_to_token, keys_pos, queries + tokens, queries, shared)
        update += keys  # in place: keys + update, without another (n, N, C) buffer
        keys = norm[3](update)
    final = _tokens_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + pos, keys)
    return getattr(transformer, layout.final_norm)(queries + final), keys


def _masks(decoder, layout: _Layout, queries: torch.Tensor, upscaled: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """All mask tokens' low-resolution logits (n, M, 4g, 4g) and IoU scores (n, M)."""
    first = layout.first_mask_token
    hyper = torch.stack([mlp(queries[:, first + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
    masks = (hyper @ upscaled.flatten(2)).view(queries.shape[0], -1, *upscaled.shape[-2:])
    return masks, decoder.iou_prediction_head(queries[:, first - 1])


def _activate(activation: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`activation(x)`, in place on a CPU for an exact GELU (SAM 2's): the same numbers without a second buffer."""
    if x.device.type == "cpu" and type(activation) is torch.nn.GELU and activation.approximate == "none":
        return torch.ops.aten.gelu_(x)
    return activation(x)


@dataclass(frozen=True)
class Sam2Image:
    """One image's share of a SAM 2 / EdgeTAM mask decoder, computed once per image (`sam2_image`)."""

    image: torch.Tensor  # (1, N, C) image tokens: the embedding plus the no-mask dense prompt embedding
    pos: torch.Tensor  # (1, N, C) their positional encoding
    add1: torch.Tensor  # (N, 4 c1) stride-8 features + first upscaling bias, token-major (see _sam2_masks)
    add2: torch.Tensor  # (4 N, 4 c2) stride-4 features + second upscaling bias, token-major
    grid: tuple[int, int]  # (g, g) image tokens
    first: _FirstLayer  # the first decoder block's projections of the image tokens


@torch.inference_mode()
def sam2_image(model, state: list[torch.Tensor]) -> Sam2Image:
    """state: [s0 (1,32,4g,4g), s1 (1,64,2g,2g), embedding (1,256,g,g)] of one image -> its `Sam2Image`.
    Rows of add1/add2: token (gy, gx), then its 2 x 2 pixels (i1, j1) of the stride-8 map, then (i2, j2) of
    the stride-4 one, channels last: the layout `_sam2_masks` computes in."""
    s0, s1, embedding = state
    decoder = model.mask_decoder
    c1, c2 = decoder.upscale_conv1.out_channels, decoder.upscale_conv2.out_channels
    gh, gw = embedding.shape[-2:]
    dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # what the encoder gives without a mask
    tokens = lambda x: x.flatten(2).transpose(1, 2).contiguous()  # noqa: E731  (1, C, g, g) -> (1, N, C)
    add1 = s1.reshape(c1, gh, 2, gw, 2).permute(1, 3, 2, 4, 0).reshape(gh * gw, 4 * c1)
    add2 = s0.reshape(c2, gh, 2, 2, gw, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(4 * gh * gw, 4 * c2)
    image, pos = tokens(embedding + dense), tokens(model.get_image_wide_positional_embeddings())
    return Sam2Image(image, pos, add1 + decoder.upscale_conv1.bias.repeat(4), add2 + decoder.upscale_conv2.bias.repeat(4),
                     (int(gh), int(gw)), _first_layer(decoder.transformer.layers[0], image, pos))


def _sam2_masks(decoder, queries: torch.Tensor, keys: torch.Tensor, image: Sam2Image, keep: slice
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's upscaling and mask product on image tokens keys (n, N, C) -> logits (n, M, 4g, 4g) and scores
    (n, M) of the mask tokens `keep` selects.

    Why not the library's layers: each 2 x 2 stride-2 transposed convolution maps one pixel to its own 2 x 2
    block, so both are matmuls on token-major rows (a token's fine pixels next to each other, channels
    last), with the stride-8 / stride-4 features (and the biases) added in that layout (`sam2_image`). That
    skips the (n, C, g, g) transpose of the image tokens and the strided adds and layer norm of
    channels-first feature maps. The pixels are put back in image order only in the (n, M, 4g, 4g) logits."""
    n, tokens, c = keys.shape
    gh, gw = image.grid
    conv1, conv2, norm = decoder.upscale_conv1, decoder.upscale_conv2, decoder.upscale_layer_norm
    c1, c2 = conv1.out_channels, conv2.out_channels
    up = keys @ conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    up += image.add1  # in place, as below: every fresh (n, 16 N, c2) buffer costs page faults
    up = _activate(decoder.activation, F.layer_norm(up.view(n, 4 * tokens, c1), (c1,), norm.weight, norm.bias,
                                                    norm.eps))
    up = up @ conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    up += image.add2
    up = _activate(decoder.activation, up).view(n, 16 * tokens, c2)
    first = SAM2_LAYOUT.first_mask_token
    mlps = list(enumerate(decoder.output_hypernetworks_mlps))[keep]
    hyper = torch.stack([mlp(queries[:, first + i]) for i, mlp in mlps], 1)
    masks = (hyper @ up.transpose(1, 2)).view(n, -1, gh, gw, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return masks.reshape(n, -1, 4 * gh, 4 * gw), decoder.iou_prediction_head(queries[:, first - 1])[:, keep]


@torch.inference_mode()
def decode_sam2(model, image: Sam2Image, points: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """n prompts on one image (`sam2_image`) through a transformers Sam2Model / EdgeTamModel: points (n, P, 2)
    and labels (n, P) in the model's frame, boxes (n, 4). Returns the logits (n, K, 4g, 4g) and scores (n, K)
    that `model(...)` gives as pred_masks[:, 0] / iou_scores[:, 0]."""
    decoder = model.mask_decoder
    sparse, _ = model.prompt_encoder(
        input_points=None if points is None else points[None], input_labels=None if labels is None else labels[None],
        input_boxes=None if boxes is None else boxes[None], input_masks=None)
    sparse = sparse[0]  # (n, s, C)
    n = sparse.shape[0]
    out_tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([out_tokens.expand(n, -1, -1), sparse.to(out_tokens.dtype)], dim=1)  # (n, t, C)
    queries, keys = _two_way(decoder.transformer, SAM2_LAYOUT, tokens, image.image, image.pos, image.first)
    dynamic = not multimask and decoder.dynamic_multimask_via_stability and not decoder.training
    keep = slice(1, None) if multimask else slice(None) if dynamic else slice(0, 1)
    masks, scores = _sam2_masks(decoder, queries, keys, image, keep)
    if dynamic:
        masks, scores = decoder._dynamic_multimask_via_stability(masks[None], scores[None])
        return masks[0], scores[0]
    return masks, scores


@torch.inference_mode()
def decode_sam1(sam, embedding: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """n prompts on one image through a segment-anything Sam. embedding (1, 256, g, g); points (n, P, 2),
    labels (n, P) and boxes (n, 4) in the model's input frame. Returns the low-resolution logits
    (n, K, 4g, 4g) and scores (n, K) that `sam.mask_decoder(...)` gives."""
    decoder = sam.mask_decoder
    sparse, dense = sam.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes, masks=None)
    n, c = sparse.shape[0], sparse.shape[-1]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    dtype = out_tokens.dtype  # the prompt encoder answers in float32 whatever the decoder's precision
    tokens = torch.cat([out_tokens.expand(n, -1, -1), sparse.to(dtype)], dim=1)
    image = (embedding + dense[:1]).to(dtype).flatten(2).transpose(1, 2)  # no mask prompt: one dense embedding
    pos = sam.prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2)
    queries, keys = _two_way(decoder.transformer, SAM1_LAYOUT, tokens, image, pos)
    upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(n, c, *embedding.shape[-2:]))
    masks, scores = _masks(decoder, SAM1_LAYOUT, queries, upscaled)
    keep = slice(1, None) if multimask else slice(0, 1)
    return masks[:, keep], scores[:, keep]
