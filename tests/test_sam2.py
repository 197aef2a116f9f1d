"""SAM 2.1 / EdgeTAM segmenters: tiny random models saved with save_pretrained and loaded through load_sam2,
the coordinate mapping as pure functions, the packed prompt state, and a preparation through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BsbError, ModelMissingError
from engine.models.sam2 import load_sam2, logits_to_image, pack_state, to_model_frame, unpack_state
from engine.models.tiny import save_tiny_dino, save_tiny_sam2

CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=["sam2", "edgetam"])
def folder(request, tmp_path_factory):
    return save_tiny_sam2(tmp_path_factory.mktemp(request.param) / "m", request.param)


@pytest.fixture()
def sam(folder):
    return load_sam2(folder, CPU, offline=True, random_weights=True)


def _image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----- pure coordinate functions -------------------------------------------------------------------

def test_a_point_lands_at_its_place_in_the_square_input_frame():
    """Non-square 30 x 60 image, 256 px model: x scales by 256/60, y by 256/30; the encoder's +0.5 completes it."""
    xy = torch.tensor([[15.0, 22.5], [0.5, 0.5], [59.5, 29.5]])
    got = to_model_frame(xy, (30, 60), 256) + 0.5
    want = torch.tensor([[64.0, 192.0], [0.5 * 256 / 60, 0.5 * 256 / 30], [59.5 * 256 / 60, 29.5 * 256 / 30]])
    torch.testing.assert_close(got, want)


def test_the_prompt_encoder_sees_the_point_at_its_relative_position(sam):
    """Through the real prompt encoder: the positional code equals that of (x/W, y/H) in [0, 1]^2."""
    H, W, xy = 30, 90, torch.tensor([[[[12.5, 20.0]]]])
    enc = sam.model.prompt_encoder
    labels = torch.ones(1, 1, 1, dtype=torch.long)
    got = enc._embed_points(to_model_frame(xy, (H, W), sam.img_size), labels, pad=False)
    got = got - enc.point_embed(labels)
    want = enc.shared_embedding(torch.tensor([[[[12.5 / W, 20.0 / H]]]]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_low_res_mask_comes_back_unshifted_and_unflipped():
    """A block in the top-left quarter of the 64 x 64 logits covers the top-left quarter of a 30 x 90 image."""
    low = torch.full((64, 64), -10.0)
    low[:32, :16] = 10.0  # top half, left quarter
    mask = logits_to_image(low, (30, 90)).numpy() > 0
    assert mask.shape == (30, 90)
    rows, cols = np.nonzero(mask)
    assert rows.min() == 0 and cols.min() == 0
    assert abs(rows.max() + 1 - 15) <= 1 and abs(cols.max() + 1 - 22.5) <= 1
    assert mask[:14, :21].all() and not mask[16:].any() and not mask[:, 24:].any()


def test_pack_unpack_round_trip():
    g = 4
    s0, s1, emb = torch.randn(2, 32, 4 * g, 4 * g), torch.randn(2, 64, 2 * g, 2 * g), torch.randn(2, 256, g, g)
    packed = pack_state(s0, s1, emb)
    assert packed.shape == (2, 256, 4 * g, g)
    torch.testing.assert_close(packed[:, :, :g], emb)  # the embedding is the top block
    for a, b in zip(unpack_state(packed), (s0, s1, emb)):
        torch.testing.assert_close(a, b)


# ----- the segmenter through the real loader ------------------------------------------------------------

def test_encode_is_the_models_own_embedding_on_top(sam, folder):
    emb = sam.encode(np.stack([_image(32, 32, 1), _image(32, 32, 2)]))
    g = sam.grid
    assert g == 16 and emb.shape == (2, 256, 4 * g, g) == (2, *sam.embedding_shape) and emb.dtype == torch.float32
    assert sam.valid_grid(30, 100) == (g, g)  # stretched to the square: no padding cells
    rows, cols = sam.valid_grid(32, 32)
    x = torch.from_numpy(np.stack([_image(32, 32, 1), _image(32, 32, 2)])).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, (256, 256), mode="bilinear", align_corners=False, antialias=True)
    x = (x.clamp(0, 255).round() / 255 - sam._mean) / sam._std
    with torch.no_grad():
        want = sam.model.get_image_embeddings(x)[-1]
    torch.testing.assert_close(emb[:, :, :int(rows), :int(cols)], want, atol=1e-4, rtol=1e-4)
    assert sam.random_weights and sam.model_id == f"{sam.model.config.model_type}:{folder}"


def test_predict_matches_the_models_own_forward(sam):
    """Our packed state + frame mapping give what the model computes from pixels with the same prompt."""
    img = _image(48, 64)
    sam.set_image(img)
    pts = np.array([[[10.5, 20.5], [40.0, 8.0]]], np.float32)
    labels = np.array([[1, 0]])
    out = sam.predict(pts, labels)
    x = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), (256, 256),
                                        mode="bilinear", align_corners=False, antialias=True)
    x = (x.clamp(0, 255).round() / 255 - sam._mean) / sam._std
    model_pts = to_model_frame(torch.from_numpy(pts).reshape(1, 1, 2, 2), (48, 64), 256)
    with torch.no_grad():
        ref = sam.model(pixel_values=x, input_points=model_pts, input_labels=torch.from_numpy(labels)[None])
    torch.testing.assert_close(torch.from_numpy(out.logits), ref.pred_masks[:, 0].clamp(-32, 32), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(torch.from_numpy(out.scores), ref.iou_scores[:, 0], atol=1e-4, rtol=1e-4)
    assert out.masks.shape == (1, 3, 48, 64) and out.masks.dtype == bool


def test_boxes_masks_batches_and_single_output(sam):
    sam.set_image(_image(40, 70))
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 40, (5, 1, 2))
    together = sam.predict(pts, np.ones((5, 1)))
    sam.prompt_batch = 2  # crosses chunk boundaries
    apart = sam.predict(pts, np.ones((5, 1)))
    np.testing.assert_allclose(together.logits, apart.logits, atol=1e-4)
    boxes = np.array([[5, 5, 30, 20], [0, 0, 69, 39]], np.float32)
    both = sam.predict(pts[:2], np.ones((2, 1)), boxes=boxes, mask_input=together.logits[:2, :1])
    assert both.masks.shape == (2, 3, 40, 70) and both.logits.shape == (2, 3, 64, 64)
    single = sam.predict(boxes=boxes, multimask=False)
    assert single.masks.shape == (2, 1, 40, 70) and single.scores.shape == (2, 1)


def test_set_image_caches_and_errors(folder):
    sam = load_sam2(folder, CPU, offline=True)
    with pytest.raises(BsbError, match="set_image"):
        sam.predict(np.zeros((1, 1, 2)), np.ones((1, 1)))
    calls = []
    sam.model.vision_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    img = _image()
    sam.set_image(img)
    sam.set_image(img.copy())
    assert len(calls) == 1
    with pytest.raises(BsbError, match="does not fit"):
        sam.set_embedding(torch.zeros(256, 16, 16), (32, 32))  # a SAM 1-shaped embedding
    with pytest.raises(BsbError, match="labels"):
        sam.predict(np.zeros((1, 2, 2)), np.ones((1, 1)))


def test_missing_and_wrong_weights(tmp_path):
    with pytest.raises(ModelMissingError, match="models fetch fast"):
        load_sam2(tmp_path / "nothing", CPU, offline=True, fetch_hint="python -m engine models fetch fast")
    dino = save_tiny_dino(tmp_path / "dino")
    with pytest.raises(BsbError, match="not SAM 2"):
        load_sam2(dino, CPU, offline=True)


def test_a_preparation_and_a_click_through_the_pipeline(tmp_path):
    """The packed state flows through prepare_mesh (SAM field on the cropped embedding, iSeg on the prompts).
    EdgeTAM only (the `fast` profile's model): both kinds share every line of Sam2Segmenter."""
    from engine import pipeline
    from engine.cache import Cache
    from engine.images import image_from_array
    from engine.mesh import mesh_from_arrays
    from engine.models.dino import load_dino
    from engine.sample_meshes import mug

    dino = load_dino(save_tiny_dino(tmp_path / "dino"), CPU, input_size=56, offline=True, random_weights=True)
    folder = save_tiny_sam2(tmp_path / "edgetam", "edgetam")
    models = pipeline.Models(dino, load_sam2(folder, CPU, offline=True, random_weights=True), "tiny")
    settings = pipeline.settings_for("tiny", sam_views=2, dino_views=3)
    v, f, _, _ = mug(0, 16)
    mesh = mesh_from_arrays(v, f)
    cache = Cache(tmp_path / "cache")
    prepared = pipeline.prepare_mesh(mesh, models, settings, CPU, cache)
    assert prepared.sam.shape == (mesh.num_vertices, 256) and not prepared.cached
    again = pipeline.prepare_mesh(mesh, models, settings, CPU, cache)
    assert again.cached and torch.equal(again.sam, prepared.sam)
    image = pipeline.prepare_image(image_from_array(_image(40, 60)), models, cache)
    assert tuple(image.sam.shape) == models.sam.embedding_shape
    result = pipeline.match_image(prepared, image, models, [[30.0, 20.0]], [1])
    assert result is not None


def test_the_pipeline_crop_keeps_exactly_the_image_embedding(sam):
    """`_crop_sam` on packed states (B, 256, 4g, g) must give the image embedding `get_image_embeddings`
    returns (what the SAM field distils), not the stride-4/8 rows packed under it."""
    from engine.pipeline import _crop_sam

    images = np.stack([_image(64, 64, seed=s) for s in (1, 2)])
    packed = sam.encode(images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, (sam.img_size, sam.img_size), mode="bilinear", align_corners=False,
                                        antialias=True)
    x = (x.clamp(0, 255).round() / 255 - sam._mean) / sam._std
    with torch.no_grad():
        *_, emb = sam.model.get_image_embeddings(x)
    crop = _crop_sam(sam, packed, 64)
    assert crop.shape == (2, 256, sam.grid, sam.grid)
    torch.testing.assert_close(crop, emb.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sam2", "edgetam"])
def test_many_prompts_decode_as_transformers_decodes_them(kind):
    """engine.models.prompt_decoder (the image's share computed once per call) against transformers' own
    decoder, prompt by prompt in a batch: two decoder blocks (the second sees per-prompt image tokens),
    single and two-point prompts with negatives, boxes, one and three masks."""
    from transformers import EdgeTamModel, Sam2Model

    from engine.models.sam2 import Sam2Segmenter
    from engine.models.prompt_decoder import decode_sam2, sam2_image
    from engine.models.tiny import tiny_sam2_config

    torch.manual_seed(0)
    cfg = tiny_sam2_config(kind)
    cfg.mask_decoder_config.num_hidden_layers = 2
    model = (Sam2Model if kind == "sam2" else EdgeTamModel)(cfg)
    with torch.no_grad():  # larger than the init's weights (logits and attention far from flat), no zero biases
        for p in model.mask_decoder.parameters():
            p.mul_(4.0).add_(0.05 * torch.randn_like(p))
    sam = Sam2Segmenter(model, "test", CPU)
    sam.set_image(_image(48, 64))
    rng = np.random.default_rng(1)
    n = 6
    for n_points in (1, 2):
        pts = to_model_frame(torch.tensor(rng.uniform(0, 48, (n, n_points, 2)), dtype=torch.float32), (48, 64), 256)
        labels = torch.tensor(rng.integers(0, 2, (n, n_points)))
        labels[:, 0] = 1
        boxes = to_model_frame(torch.tensor([[4.0, 4, 40, 30]] * n).reshape(n, 2, 2), (48, 64), 256).reshape(n, 4)
        for box in (None, boxes):
            for multimask in (True, False):
                with torch.no_grad():
                    ref = sam.model(image_embeddings=[t.expand(n, -1, -1, -1) for t in sam._state],
                                    input_points=pts[:, None], input_labels=labels[:, None],
                                    input_boxes=None if box is None else box[:, None], multimask_output=multimask)
                logits, scores = decode_sam2(sam.model, sam2_image(sam.model, list(sam._state)), pts, labels, box,
                                              multimask)
                scale = float(ref.pred_masks.abs().max())
                assert logits.shape == ref.pred_masks[:, 0].shape and scale > 1.0
                torch.testing.assert_close(logits, ref.pred_masks[:, 0], atol=1e-4 * scale, rtol=1e-4)
                torch.testing.assert_close(scores, ref.iou_scores[:, 0], atol=1e-5, rtol=1e-4)
