"""iSeg: interactive 3D part segmentation from vertex clicks, trained per mesh from rendered views."""

from engine.iseg.model import ISegModel
from engine.iseg.postprocess import connected_region, otsu_threshold, select_vertices, threshold_probability
from engine.iseg.train import ISegConfig, train_iseg
from engine.iseg.view_segmenters import OracleViewSegmenter, SamViewSegmenter

__all__ = ["ISegModel", "ISegConfig", "train_iseg", "OracleViewSegmenter", "SamViewSegmenter",
           "otsu_threshold", "threshold_probability", "connected_region", "select_vertices"]
