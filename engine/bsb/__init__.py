"""Best Segmentation Buddies: image <-> mesh part correspondence on top of SAM, DINOv2 features and iSeg."""

from engine.bsb.baselines import nearest_vertex, random_valid_candidate
from engine.bsb.features import FeatureGrid, feature_grid
from engine.bsb.match_all import match_all
from engine.bsb.matching import match
from engine.bsb.result import Candidate, MatchResult
from engine.bsb.shape_to_image import shape_to_image

__all__ = ["Candidate", "FeatureGrid", "MatchResult", "feature_grid", "match", "match_all", "nearest_vertex",
           "random_valid_candidate", "shape_to_image"]
