"""Learned Majorization-Minimization EEG inverse solver for MNE-Python."""

from ._version import __version__

__all__ = ["__version__"]
