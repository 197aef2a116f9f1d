"""Evaluation harness: labelled test scenes, oracle 2D models, and the correspondence benchmarks.

`data` reads the labelled meshes, `scenes` renders test images from them, `oracle` stands in for SAM and
DINOv2 when no weights are present (planted features handed to the matcher directly), `correspondence`
runs the paper's click protocol and its metrics. `oracle_models` are oracle teachers behind the real
DinoFeatures / SamSegmenter interfaces, so `e2e` measures the whole engine (preparation, distillation,
iSeg training, BSB, seeding) through the real `Session` path.
"""
