"""bench/flops.py counts what a hand count of the architecture says, on the meta device as on the CPU."""

import importlib.util
from pathlib import Path

import pytest

from engine.models.profiles import PROFILES


@pytest.fixture(scope="module")
def flops():
    path = Path(__file__).resolve().parents[1] / "bench" / "flops.py"
    spec = importlib.util.spec_from_file_location("bench_flops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vit_gflops(tokens: int, patches: int, patch: int, dim: int, mlp: int, layers: int) -> float:
    """2 FLOPs per multiply-add of a ViT: patch embedding, then per layer qkv, scores, mix, output, MLP."""
    embed = patches * 3 * patch * patch * dim
    layer = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * mlp
    return 2 * (embed + layers * layer) / 1e9


def test_tiny_dino_matches_a_hand_count(flops):
    # tiny DINOv2 (engine.models.tiny): 56 px / 14 = 4 x 4 patches + CLS + 2 registers, 32 wide, 2 layers; DINOv2's
    # MLP is mlp_ratio (4) x wide, whatever intermediate_size says. Attention included on either device (sdpa's
    # fused CPU kernel is not in the counter's table; bench/flops.py counts through the math backend).
    for device in ("meta", "cpu"):
        name, gflops = flops.dino_gflops(PROFILES["tiny"], device)
        assert gflops == pytest.approx(vit_gflops(tokens=19, patches=16, patch=14, dim=32, mlp=128, layers=2), rel=1e-9)


def test_meta_device_counts_what_the_cpu_runs(flops):
    meta = flops.sam_costs(PROFILES["tiny"], "meta")
    cpu = flops.sam_costs(PROFILES["tiny"], "cpu")
    assert meta[1:] == pytest.approx(cpu[1:], rel=1e-9) and meta[1] > 0 and meta[2] > 0


def test_prompt_count_follows_the_iseg_settings(flops):
    # cpu profile: 3% of 11,500 vertices capped at 200 clicks, each on min(6 views per click, 4 SAM views)
    assert flops.prompts_per_prepare("cpu", 11_500, 0.0) == 200 * 4
    assert flops.prompts_per_prepare("cpu", 11_500, 1.0) == 200 * 4 * 2
