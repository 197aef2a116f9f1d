"""Evaluation harness: labelled test scenes, oracle 2D models, and the correspondence benchmark.

`data` reads the labelled meshes, `scenes` renders test images from them, `oracle` stands in for SAM and
DINOv2 when no weights are present, and `correspondence` runs the paper's click protocol and its metrics.
"""
