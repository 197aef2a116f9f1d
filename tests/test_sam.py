"""SamSegmenter on a tiny SAM checkpoint loaded from disk, and the object/part mask choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BsbError, ModelMissingError
from engine.models.masks import choose_object_part
from engine.models.sam import load_sam
from engine.models.tiny import save_tiny_sam

CPU = torch.device("cpu")
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny.pth")


@pytest.fixture()
def sam(ckpt):
    return load_sam("tiny", ckpt, CPU, random_weights=True)


def _image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _count_encodes(sam) -> list:
    calls = []
    sam.sam.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_encode_shapes_and_valid_grid(sam):
    emb = sam.encode(np.stack([_image(32, 32, 1), _image(32, 32, 2)]))
    assert emb.shape == (2, 256, 16, 16) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert sam.valid_grid(32, 32) == (16, 16)  # square: the whole grid
    assert sam.valid_grid(100, 50) == (16, 8)  # 256 x 128 after resize, padded on the right
    assert sam.valid_grid(30, 100) == pytest.approx((77 / 16, 16))  # 76.8 -> 77 rows of pixels
    assert sam.random_weights and sam.grid == 16


def test_same_image_is_encoded_once(sam):
    calls = _count_encodes(sam)
    img = _image()
    sam.set_image(img)
    sam.set_image(img.copy())
    assert len(calls) == 1
    sam.set_image(_image(seed=5))
    assert len(calls) == 2
    sam.set_image(img)  # still cached (LRU of 4)
    assert len(calls) == 2


def test_lru_evicts_oldest(ckpt):
    sam = load_sam("tiny", ckpt, CPU)
    sam.cache_size = 2
    calls = _count_encodes(sam)
    for seed in (1, 2, 3, 1):
        sam.set_image(_image(16, 16, seed))
    assert len(calls) == 4  # image 1 was evicted by image 3


def test_predict_shapes(sam):
    sam.set_image(_image(48, 64))
    pts = np.array([[[10.5, 20.5]], [[40.0, 8.0]]], np.float32)
    out = sam.predict(pts, np.ones((2, 1), np.int64))
    assert out.masks.shape == (2, 3, 48, 64) and out.masks.dtype == bool
    assert out.scores.shape == (2, 3) and out.scores.dtype == np.float32
    assert out.logits.shape == (2, 3, 64, 64) and out.logits.dtype == np.float32
    single = sam.predict(pts, np.ones((2, 1)), multimask=False)
    assert single.masks.shape == (2, 1, 48, 64)
    boxed = sam.predict(None, None, boxes=np.array([[2, 3, 30, 40]], np.float32))
    assert boxed.masks.shape == (1, 3, 48, 64)
    again = sam.predict(pts, np.ones((2, 1)), mask_input=out.logits[:, :1])
    assert again.masks.shape == (2, 3, 48, 64)


def test_points_reach_sam_in_its_pixel_index_convention(sam):
    """A pixel centre (i + 0.5) in a 64x48 image (x4 to SAM's 256x192) must arrive as index 4i + 1.5."""
    seen = {}
    encoder = sam.sam.prompt_encoder
    original = encoder.forward

    def spy(points, boxes, masks):
        seen["points"], seen["boxes"] = points, boxes
        return original(points, boxes, masks)

    encoder.forward = spy
    sam.set_image(_image(48, 64))
    sam.predict(np.array([[[10.5, 20.5]]]), np.array([[1]]))
    coords = seen["points"][0][0, 0].numpy()
    # SAM adds 0.5 inside; 41.5 + 0.5 = 42 = 10.5 * 4: the click's centre lands on the same spot.
    np.testing.assert_allclose(coords, [10.5 * 4 - 0.5, 20.5 * 4 - 0.5])
    sam.predict(None, None, boxes=np.array([[0.0, 0.0, 64.0, 48.0]]))
    np.testing.assert_allclose(seen["boxes"][0].numpy(), [-0.5, -0.5, 255.5, 191.5])


def test_batched_predict_equals_one_by_one(sam):
    sam.set_image(_image(48, 64, 7))
    n = 6
    pts = RNG.uniform(0, 48, (n, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, -1], [1, 1], [0, 1], [1, -1], [1, 0]])
    sam.prompt_batch = 4  # also crosses a chunk boundary
    batched = sam.predict(pts, labels)
    for i in range(n):
        one = sam.predict(pts[i:i + 1], labels[i:i + 1])
        np.testing.assert_allclose(batched.scores[i], one.scores[0], atol=1e-5)
        np.testing.assert_allclose(batched.logits[i], one.logits[0], atol=1e-4)
        assert (batched.masks[i] == one.masks[0]).mean() > 0.999


def test_set_embedding_reuses_an_embedding(sam):
    img = _image(32, 32, 9)
    emb = sam.encode(img[None])[0]
    sam.set_image(img)
    direct = sam.predict(np.array([[[5.0, 5.0]]]), np.array([[1]]))
    sam.set_embedding(emb, (32, 32))
    reused = sam.predict(np.array([[[5.0, 5.0]]]), np.array([[1]]))
    np.testing.assert_allclose(direct.logits, reused.logits, atol=1e-5)
    with pytest.raises(BsbError, match="does not fit"):
        sam.set_embedding(torch.zeros(256, 8, 8), (32, 32))


def test_predict_needs_an_image(ckpt):
    sam = load_sam("tiny", ckpt, CPU)
    with pytest.raises(BsbError, match="set_image"):
        sam.predict(np.zeros((1, 1, 2)), np.ones((1, 1)))


def test_missing_and_wrong_checkpoints(tmp_path, ckpt):
    with pytest.raises(ModelMissingError, match="models fetch cpu"):
        load_sam("vit_b", tmp_path / "sam_vit_b_01ec64.pth", CPU, fetch_hint="python -m engine models fetch cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelMissingError, match="could not be loaded"):
        load_sam("tiny", tmp_path / "junk.pth", CPU)
    with pytest.raises(ModelMissingError, match="vit_b"):
        load_sam("vit_b", ckpt, CPU)  # a tiny state_dict is not a ViT-B checkpoint


# ----- mask choice ------------------------------------------------------------------------------------

def _disc(r: float, size: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return (x - 20) ** 2 + (y - 20) ** 2 < r * r


def test_object_is_largest_and_part_smallest_whatever_the_order():
    small, mid, big = _disc(4), _disc(9), _disc(16)
    orders = [(small, mid, big), (big, small, mid), (mid, big, small)]
    masks = np.stack([np.stack(o) for o in orders])
    scores = np.full((3, 3), 0.9, np.float32)
    obj, part, oi, pi = choose_object_part(masks, scores)
    np.testing.assert_array_equal(oi, [2, 0, 1])
    np.testing.assert_array_equal(pi, [0, 1, 2])
    assert (obj == big).all() and (part == small).all()


def test_unconfident_masks_are_ignored_and_best_always_counts():
    small, mid, big = _disc(4), _disc(9), _disc(16)
    masks = np.stack([np.stack([small, mid, big])] * 3)
    scores = np.array([[0.2, 0.9, 0.8],  # tiny mask unconfident -> part = mid
                       [0.9, 0.3, 0.1],  # only the small one is confident -> both are it
                       [0.3, 0.1, 0.2]])  # nothing reaches min_score -> the best alone
    obj, part, oi, pi = choose_object_part(masks, scores, min_score=0.5)
    np.testing.assert_array_equal(oi, [2, 0, 0])
    np.testing.assert_array_equal(pi, [1, 0, 0])


def test_empty_masks_lose_and_ties_go_to_the_higher_score():
    empty, a, b = np.zeros((40, 40), bool), _disc(6), np.roll(_disc(6), 3, axis=1)
    masks = np.stack([np.stack([empty, a, b])])
    _, _, oi, pi = choose_object_part(masks, np.array([[0.99, 0.7, 0.8]]))
    assert pi[0] == 2 and oi[0] == 2  # equal areas: the higher score wins both
    all_empty = np.zeros((1, 3, 4, 4), bool)
    _, _, oi, pi = choose_object_part(all_empty, np.array([[0.1, 0.9, 0.2]]))
    assert oi[0] == pi[0] == 1


def test_many_prompts_decode_as_segment_anything_decodes_them():
    """engine.models.prompt_decoder.decode_sam1 (the image's share computed once per call) against
    segment-anything's own mask decoder: two decoder blocks (the second sees per-prompt image tokens),
    one and two points with negatives and padding, boxes, one and three masks."""
    from dataclasses import replace

    from engine.models.prompt_decoder import decode_sam1
    from engine.models.sam import SAM_SPECS, build_sam

    torch.manual_seed(0)
    model = build_sam(replace(SAM_SPECS["tiny"], decoder_depth=2)).eval()
    with torch.no_grad():  # larger than the init's weights (logits and attention far from flat), no zero biases
        for p in model.mask_decoder.parameters():
            p.mul_(4.0).add_(0.05 * torch.randn_like(p))
    model.mask_decoder.double()  # float64, so that the comparison is tight (float32 rounding grows with the weights)
    embedding = torch.randn(1, 256, 16, 16, dtype=torch.float64)
    rng = np.random.default_rng(2)
    n = 6
    for n_points in (1, 2):
        pts = torch.tensor(rng.uniform(0, 256, (n, n_points, 2)), dtype=torch.float32)
        labels = torch.tensor(rng.integers(-1, 2, (n, n_points)))
        labels[:, 0] = 1
        boxes = torch.tensor([[10.0, 20, 200, 180]] * n)
        for box in (None, boxes):
            for multimask in (True, False):
                with torch.no_grad():
                    sparse, dense = model.prompt_encoder(points=(pts, labels), boxes=box, masks=None)
                    ref, ref_scores = model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe().double(),
                                                         sparse.double(), dense.double(), multimask)
                logits, scores = decode_sam1(model, embedding, pts, labels, box, multimask)
                scale = float(ref.abs().max())
                assert logits.shape == ref.shape and scale > 1.0
                torch.testing.assert_close(logits, ref, atol=1e-9 * scale, rtol=1e-9)
                torch.testing.assert_close(scores, ref_scores, atol=1e-9 * float(ref_scores.abs().max()), rtol=1e-9)
