"""Helpers of the sphinx-gallery configuration (importable, so the config pickles)."""

import warnings


def reset_warnings(gallery_conf, fname):
    """Run before each example: show our warnings, hide known third-party noise."""
    warnings.resetwarnings()
    warnings.filterwarnings("default")
    # MNE >= 1.13 deprecates its matplotlib 3D backend, which is what renders
    # ``stc.plot`` in the gallery without a display or OpenGL (doc/install.rst).
    warnings.filterwarnings(
        "ignore", message=".*matplotlib 3D backend is deprecated.*", category=FutureWarning)
