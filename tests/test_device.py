import pytest
import torch

from engine.device import describe_device, pick_device
from engine.errors import BsbError


def test_auto_picks_an_available_device():
    dev = pick_device("auto")
    assert dev.type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert dev.type != "cuda"
    assert describe_device(dev)


def test_cpu_always_works():
    assert pick_device("cpu") == torch.device("cpu")


def test_unknown_or_absent_device_is_a_clear_error():
    with pytest.raises(BsbError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BsbError, match="no CUDA GPU"):
            pick_device("cuda")
