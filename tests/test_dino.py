"""DinoFeatures: tiny models saved and loaded back through the real loader; grid coverage by construction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.errors import BsbError, ModelMissingError
from engine.models.dino import IMAGENET_MEAN, IMAGENET_STD, DinoFeatures, load_dino, upsample
from engine.models.tiny import save_tiny_dino

CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=[True, False], ids=["registers", "plain"])
def tiny_dino(request, tmp_path_factory):
    folder = save_tiny_dino(tmp_path_factory.mktemp("dino") / "m", registers=request.param)
    return load_dino(folder, CPU, input_size=56, offline=True, random_weights=True)


def test_shape_dtype_and_registers(tiny_dino):
    images = np.random.default_rng(0).integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    out = tiny_dino(images)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.shape == (3, tiny_dino.dim, 4, 4) and tiny_dino.dim == 32
    expected_skip = 1 + (2 if "WithRegisters" in type(tiny_dino.model).__name__ else 0)
    assert tiny_dino.skip == expected_skip and tiny_dino.random_weights


def test_features_are_the_final_layernormed_patch_tokens(tiny_dino):
    """Recompute independently: last hidden state -> the model's final LayerNorm -> drop CLS/registers."""
    images = np.random.default_rng(1).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = tiny_dino.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        tokens = tiny_dino.model.layernorm(hidden)
    n_reg = getattr(tiny_dino.model.config, "num_register_tokens", 0)
    patches = tokens[:, 1 + n_reg:]
    expected = patches.transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(tiny_dino(images), expected, atol=1e-5, rtol=1e-4)


def test_batches_do_not_mix(tiny_dino):
    images = np.random.default_rng(2).integers(0, 256, (5, 70, 42, 3), dtype=np.uint8)
    tiny_dino.batch_size = 2
    together = tiny_dino(images)
    alone = torch.cat([tiny_dino(images[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


class _MeanColourViT(torch.nn.Module):
    """A stand-in ViT whose patch token is the patch's mean (normalised) colour: features we can predict."""

    def __init__(self, registers: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(patch_size=14, hidden_size=3, num_register_tokens=registers)

    def forward(self, pixel_values):
        B = pixel_values.shape[0]
        pooled = torch.nn.functional.avg_pool2d(pixel_values, 14).flatten(2).transpose(1, 2)
        extra = torch.full((B, 1 + self.config.num_register_tokens, 3), 99.0)  # CLS + registers: must vanish
        return SimpleNamespace(last_hidden_state=torch.cat([extra, pooled], 1))


@pytest.mark.parametrize("H,W", [(98, 210), (300, 120), (64, 64)])
def test_grid_spans_exactly_the_whole_image(H, W):
    """A horizontal/vertical ramp image: cell (r, c) must see the ramp value at its own centre."""
    dino = DinoFeatures(_MeanColourViT(registers=4), CPU, input_size=112)
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = np.round((x + 0.5) / W * 255)
    rgb[..., 1] = np.round((y + 0.5) / H * 255)
    grid = dino(rgb[None])[0]
    rows, cols = dino.grid_size(H, W)
    assert grid.shape == (3, rows, cols) and max(rows, cols) == 8
    assert rows == max(1, round(8 * H / max(H, W))) and cols == max(1, round(8 * W / max(H, W)))
    colour = grid * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    want_x = (torch.arange(cols) + 0.5) / cols
    want_y = (torch.arange(rows) + 0.5) / rows
    assert torch.allclose(colour[0], want_x.expand(rows, cols), atol=0.02)  # no padding cells, no crop
    assert torch.allclose(colour[1], want_y[:, None].expand(rows, cols), atol=0.02)


def test_upsample_and_input_size_checks(tiny_dino):
    grid = torch.arange(4.0).view(1, 1, 2, 2)
    up = upsample(grid, (4, 6))
    assert up.shape == (1, 1, 4, 6) and up[0, 0, 0, 0] == 0 and up[0, 0, -1, -1] == 3
    with pytest.raises(BsbError, match="multiple of 14"):
        DinoFeatures(tiny_dino.model, CPU, input_size=100)


def test_missing_weights(tmp_path):
    with pytest.raises(ModelMissingError, match="models fetch cpu"):
        load_dino(tmp_path / "nothing", CPU, offline=True, fetch_hint="python -m engine models fetch cpu")
