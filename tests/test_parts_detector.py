"""The text detector's loader: a tiny random Grounding DINO saved in the real Hugging Face format
(config, safetensors, word-piece tokenizer, processor) and loaded back through `load_detector`."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import BsbError, ModelMissingError
from engine.models.detector import DETECTOR_IDS, TextDetector, ensure_tiny_detector, load_detector, load_profile_detector


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ensure_tiny_detector(tmp_path_factory.mktemp("models") / "tiny" / DETECTOR_IDS["tiny"])


def test_tiny_detector_loads_through_the_real_loader_and_detects(tiny_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "vocab.txt"):
        assert (tiny_dir / name).is_file(), name
    detector = load_detector(tiny_dir, "cpu", offline=True, random_weights=True)
    assert type(detector.model).__name__ == "GroundingDinoForObjectDetection" and detector.random_weights
    detector.box_threshold = detector.text_threshold = 0.0   # random weights: keep every query
    images = np.random.default_rng(0).integers(0, 255, (2, 70, 90, 3), dtype=np.uint8)
    out = detector.detect(images, "Wing")
    assert len(out) == 2
    for boxes, scores in out:
        assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 90).all() and (boxes[:, 3] <= 70).all()
        assert (boxes[:, 2] > boxes[:, 0]).all()
    # a second write is a no-op, the profile loader finds the same folder
    assert ensure_tiny_detector(tiny_dir) == tiny_dir
    assert load_profile_detector("tiny", tiny_dir.parent.parent).model_id == str(tiny_dir)


def test_prompt_format_and_missing_weights():
    assert TextDetector.prompt("  The  Handle. ") == "the handle."
    with pytest.raises(BsbError):
        TextDetector.prompt(" . ")
    with pytest.raises(ModelMissingError, match="fetch-detector"):
        load_detector("no-such-org/no-such-detector", offline=True)
