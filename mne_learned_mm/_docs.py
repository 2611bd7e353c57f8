"""Shared docstring entries (MNE-Python's ``docdict`` / ``fill_doc`` convention).

A parameter (or return value) described the same way in several docstrings is
written once in :data:`docdict`; :func:`fill_doc` puts it in place of a line
``%(name)s``, indented as that line. The replacement is plain text (no ``%``
formatting), so other ``%`` signs in a docstring stay as written, and names
that are not in :data:`docdict` (e.g. MNE's own ``%(verbose)s``) are left for
MNE to fill.

This module imports nothing of the package nor of MNE: :mod:`.solver` uses it
and never imports MNE.
"""

import re

docdict = {}
"""Entries by name; continuation lines indented by 4 spaces (relative)."""

# evaluation.metrics
docdict["X_pair"] = """
X, X_hat : array, shape (n_sources, n_times)
    True and estimated sources."""
docdict["X_pair_seed"] = docdict["X_pair"] + """
seed : int
    True seed."""
docdict["zone"] = """
zone : array of int, shape (n_zone,)
    Search zone of the seed (see :func:`seed_zone`)."""
docdict["pos_zone"] = """
pos : array, shape (n_sources, 3)
    Source positions in metres.""" + docdict["zone"]

# evaluation.methods
docdict["depth"] = """
depth : float
    Depth weighting exponent (when the forward allows it)."""
docdict["warnings_"] = """
warnings_ : collections.Counter
    Convergence warnings met so far."""

# simulation (PatchConfig, BankConfig)
docdict["n_patches"] = """
n_patches : tuple of int
    Inclusive range of the number of patches per sample."""
docdict["margin"] = """
margin : int
    A later seed is at least ``order + margin`` rings away from every
    source of earlier patches, so patches neither overlap nor touch when
    ``margin >= 2``."""

# solver.prior
docdict["differentiable"] = """
differentiable : bool
    Return tensors differentiable with respect to the layer weights (else
    floats)."""

# solver.start
docdict["Y_max_rank"] = """
Y : Tensor, shape (n_batch, n_sensors, n_times)
    Sensor data.
max_rank : int
    Most temporal components kept."""
docdict["L_min_share"] = """
L : Tensor, shape (n_sensors, n_sources)
min_share : float
    In (0, 1].
max_pattern_gain : float
    In [0, 1]."""

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def _fill(match):
    indent, name = match.groups()
    if name not in docdict:
        return match.group(0)
    return "\n".join(indent + line if line else line
                     for line in docdict[name].strip("\n").split("\n"))


def fill_doc(obj):
    """Put the :data:`docdict` entries in the ``%(name)s`` lines of a docstring.

    Parameters
    ----------
    obj : callable | type
        Function, method or class; its ``__doc__`` is filled in place.

    Returns
    -------
    obj : callable | type
        The same object.
    """
    if obj.__doc__:  # None under python -OO
        obj.__doc__ = _PLACEHOLDER.sub(_fill, obj.__doc__)
    return obj
