"""Learned Majorization-Minimization EEG inverse solver for MNE-Python."""

from ._version import __version__
from .head import (
    default_info,
    fetch_fsaverage_head,
    fit_fsaverage_montage,
    make_fsaverage_forward,
)
from .inverse import LearnedMMInverse, apply_learned_mm
from .pretrained import fetch_pretrained, list_models

__all__ = [
    "__version__",
    "LearnedMMInverse",
    "apply_learned_mm",
    "default_info",
    "fetch_fsaverage_head",
    "fetch_pretrained",
    "fit_fsaverage_montage",
    "list_models",
    "make_fsaverage_forward",
]
