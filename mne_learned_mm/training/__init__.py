"""Bilevel training of learned MM solvers on simulated data (Alg. 2)."""

from .config import TrainConfig
from .loop import train, validate

__all__ = ["TrainConfig", "train", "validate"]
