"""SAM 2's mask decoder for many point/box prompts on ONE image, with the prompt-independent work done once.

Why: iSeg's training data (thousands of prompts per mesh) and every BSB click (one prompt per candidate)
decode many prompts per image, and transformers' decoder repeats all of its image-side work for each
prompt (a copy of the 64 x 64 x 256 embedding, four 256 -> 128 projections of it per block). Here:
- the first block's image-side projections (keys and values the prompt tokens attend to, queries of the
  image-to-token attention) depend on the image only: they are computed once per call;
- where the image tokens differ per prompt, attention between the few prompt tokens (t <= 10, 8 heads)
  and the 4096 image tokens is reassociated so that no full-width projection of the image tokens is
  needed: softmax(q Wk X^T) (X Wv^T) = softmax((q Wk) X^T) X Wv^T (a softmax row sums to 1, so the value
  bias passes through), and o_proj(softmax(.) V) = softmax(.) (V Wo^T).
Same numbers as transformers' decoder up to float rounding (tests/test_sam2.py compares them). Mask
prompts (a dense embedding per prompt) take transformers' own path.
"""

from __future__ import annotations

import torch


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, L, heads * d) -> (n, heads, L, d)."""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _tokens_to_image(attn, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`attn(query=queries, key=keys, value=values)` for queries (n, t, C) on image tokens (1 or n, N, C)."""
    h, d = attn.num_attention_heads, attn.head_dim
    n, t, c = queries.shape
    q = _split_heads(attn.q_proj(queries), h)  # (n, h, t, d)
    if keys.shape[0] == 1:  # the same image tokens for every prompt: project them once
        k = _split_heads(attn.k_proj(keys), h)
        v = _split_heads(attn.v_proj(values), h)
        w = torch.softmax(q @ k.transpose(-1, -2) * attn.scaling, dim=-1)
        out = w @ v  # (n, h, t, d)
    else:  # per-prompt image tokens: (q Wk) against them, then their weighted mean through Wv
        # (the key bias adds q . bk to a whole row of scores: the softmax over image tokens ignores it)
        a = torch.einsum("nhtd,hdc->nhtc", q, attn.k_proj.weight.view(h, d, c))
        scores = (a.reshape(n, h * t, c) @ keys.transpose(1, 2)).view(n, h, t, -1)
        w = torch.softmax(scores * attn.scaling, dim=-1)
        mean = (w.reshape(n, h * t, -1) @ values).view(n, h, t, c)
        out = torch.einsum("nhtc,hdc->nhtd", mean, attn.v_proj.weight.view(h, d, c)) + attn.v_proj.bias.view(h, 1, d)
    return attn.o_proj(out.transpose(1, 2).reshape(n, t, h * d))


def _image_to_tokens(attn, image: torch.Tensor, token_keys: torch.Tensor, token_values: torch.Tensor,
                     image_queries: torch.Tensor | None = None) -> torch.Tensor:
    """`attn(query=image, key=token_keys, value=token_values)` for image tokens (1 or n, N, C) attending to
    prompt tokens (n, t, C); `image_queries`: q_proj(image) when already known. Returns (n, N, C)."""
    h, d = attn.num_attention_heads, attn.head_dim
    n, t, c = token_keys.shape
    k = _split_heads(attn.k_proj(token_keys), h)  # (n, h, t, d)
    v = _split_heads(attn.v_proj(token_values), h)
    if image.shape[0] == 1:
        q = _split_heads(attn.q_proj(image) if image_queries is None else image_queries, h)  # (1, h, N, d)
        scores = q @ k.transpose(-1, -2)  # (n, h, N, t)
    else:  # image (X Wq^T + bq) . k = X (Wq^T k) + bq . k, per head
        m = torch.einsum("hdc,nhtd->ncht", attn.q_proj.weight.view(h, d, c), k).reshape(n, c, h * t)
        bias = torch.einsum("hd,nhtd->nht", attn.q_proj.bias.view(h, d), k).reshape(n, 1, h * t)
        scores = (image @ m + bias).view(n, -1, h, t).transpose(1, 2)
    w = torch.softmax(scores * attn.scaling, dim=-1)  # (n, h, N, t)
    vo = torch.einsum("nhtd,chd->nhtc", v, attn.o_proj.weight.view(c, h, d))  # each token's value through o_proj
    return w.transpose(1, 2).reshape(n, -1, h * t) @ vo.reshape(n, h * t, c) + attn.o_proj.bias


@torch.inference_mode()
def decode_many(model, state: list[torch.Tensor], points: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """n prompts on one image. state: [s0 (1,32,4g,4g), s1 (1,64,2g,2g), embedding (1,256,g,g)];
    points (n, P, 2) and labels (n, P) in the model's frame, boxes (n, 4). Returns the low-resolution
    logits (n, K, 4g, 4g) and scores (n, K) that `model(...)` gives as pred_masks[:, 0] / iou_scores[:, 0]."""
    decoder, layers = model.mask_decoder, model.mask_decoder.transformer.layers
    s0, s1, embedding = state
    sparse, dense = model.prompt_encoder(
        input_points=None if points is None else points[None], input_labels=None if labels is None else labels[None],
        input_boxes=None if boxes is None else boxes[None], input_masks=None)
    sparse = sparse[0]  # (n, s, C)
    n, c = sparse.shape[0], sparse.shape[-1]
    g_h, g_w = embedding.shape[-2:]
    out_tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([out_tokens.expand(n, -1, -1), sparse.to(out_tokens.dtype)], dim=1)  # (n, t, C)
    image = (embedding + dense).flatten(2).transpose(1, 2)  # (1, N, C)
    pos = model.get_image_wide_positional_embeddings().flatten(2).transpose(1, 2)  # (1, N, C)

    def module_attn(attn, q, k, v):  # transformers' attention wants (batch, point_batch, tokens, C)
        return attn(query=q[:, None], key=k[:, None], value=v[:, None])[0][:, 0]

    queries, keys = tokens, image
    for layer in layers:
        if layer.skip_first_layer_pe:
            queries = module_attn(layer.self_attn, queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + module_attn(layer.self_attn, q, q, queries)
        queries = layer.layer_norm1(queries)
        keys_pos = keys + pos
        queries = layer.layer_norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, queries + tokens,
                                                               keys_pos, keys))
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        keys = layer.layer_norm4(keys + _image_to_tokens(layer.cross_attn_image_to_token, keys_pos,
                                                         queries + tokens, queries))
    final = model.mask_decoder.transformer
    queries = final.layer_norm_final_attn(
        queries + _tokens_to_image(final.final_attn_token_to_image, queries + tokens, keys + pos, keys))

    grid = keys.transpose(1, 2).reshape(-1, c, g_h, g_w)
    up = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(grid) + s1))
    up = decoder.activation(decoder.upscale_conv2(up) + s0)  # (n, C/8, 4g, 4g)
    k_masks = decoder.num_mask_tokens
    hyper = torch.stack([mlp(queries[:, 2 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    masks = (hyper @ up.flatten(2)).view(n, k_masks, *up.shape[-2:])
    scores = decoder.iou_prediction_head(queries[:, 1])
    if multimask:
        return masks[:, 1:], scores[:, 1:]
    if decoder.dynamic_multimask_via_stability and not decoder.training:
        masks, scores = decoder._dynamic_multimask_via_stability(masks[None], scores[None])
        return masks[0], scores[0]
    return masks[:, :1], scores[:, :1]
