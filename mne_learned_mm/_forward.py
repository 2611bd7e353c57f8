"""Forward-solution and source-mesh helpers shared by the whole package.

One implementation each of: the fixed-orientation surface forward check and
conversion, reading a forward file (or the default fsaverage forward), the
mesh adjacency of a source space, its neighbour rings and the patches built on
them (the simulators' and the start's dictionary of patches). The inverse,
simulation, training and evaluation code all use these (``inverse.py`` may
not import ``simulation/``, so they live here).
"""

import warnings

import mne
import numpy as np
from mne.forward import is_fixed_orient
from mne.utils import logger
from scipy import sparse
from scipy.sparse.csgraph import dijkstra

_CHUNK = 256  # seeds per call of dijkstra in ring_hops


# -- forward solutions ---------------------------------------------------------------
def check_surface_forward(fwd, *, fixed=True):
    """Raise unless ``fwd`` is an EEG forward on a surface source space.

    Parameters
    ----------
    fwd : mne.Forward
        The forward solution.
    fixed : bool
        Also require fixed orientation (see :func:`to_fixed`).
    """
    if not isinstance(fwd, mne.Forward):
        raise TypeError(f"fwd must be an mne.Forward, got {type(fwd).__name__}")
    kind = fwd["src"].kind
    if kind != "surface":
        raise ValueError(
            f"The forward has a {kind} source space; the learned MM solver needs a "
            "cortical surface source space with fixed orientation (e.g. "
            "mne_learned_mm.make_fsaverage_forward()).")
    if len(mne.pick_types(fwd["info"], meg=False, eeg=True, exclude=())) == 0:
        raise ValueError("The forward has no EEG channels.")
    if fixed and not is_fixed_orient(fwd):
        raise ValueError(
            "A fixed-orientation forward is required; use mne.convert_forward_solution("
            "fwd, surf_ori=True, force_fixed=True, use_cps=True).")


def to_fixed(fwd):
    """Fixed orientation along the cortical normal (the package's convention).

    Parameters
    ----------
    fwd : mne.Forward
        Surface forward, free or fixed orientation.

    Returns
    -------
    fwd : mne.Forward
        ``mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
        use_cps=True)``.
    """
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                        use_cps=True, verbose=False)


def fixed_surface_forward(fwd):
    """Check ``fwd``, convert it to fixed orientation if needed, keep its EEG channels.

    Parameters
    ----------
    fwd : mne.Forward
        EEG forward on a surface source space (free or fixed orientation).

    Returns
    -------
    fwd : mne.Forward
        Fixed-orientation forward with only the EEG channels.
    """
    check_surface_forward(fwd, fixed=False)
    if not is_fixed_orient(fwd):
        logger.info("Converting the free-orientation forward to fixed orientation "
                    "(surface normal)")
        fwd = to_fixed(fwd)
    with mne.utils.use_log_level("warning"):  # no "90 out of 90 channels remain" line
        return mne.pick_types_forward(fwd, meg=False, eeg=True)


def read_forward(fname=None, *, fixed=True):
    """Read a forward file in surface orientation, or build the default one.

    Parameters
    ----------
    fname : path-like | None
        Forward file; ``None`` gives
        :func:`mne_learned_mm.make_fsaverage_forward` with its defaults.
    fixed : bool
        Fixed orientation (:func:`to_fixed`); else free orientation in surface
        coordinates.

    Returns
    -------
    fwd : mne.Forward
    """
    if fname is None:
        from .head import make_fsaverage_forward

        return make_fsaverage_forward(fixed=fixed, verbose=False)
    fwd = mne.read_forward_solution(fname, verbose=False)
    if fixed:
        return to_fixed(fwd)
    return mne.convert_forward_solution(fwd, surf_ori=True, use_cps=True, verbose=False)


# -- source-space mesh ------------------------------------------------------------------
def _tris_adjacency(src):
    """Edges of ``use_tris`` between used vertices, in used-vertex numbering."""
    rows, cols, offset = [], [], 0
    for s in src:
        tris = s["use_tris"] if s["use_tris"] is not None else s["tris"]
        vertno = np.asarray(s["vertno"])
        local = np.full(s["np"], -1, dtype=np.int64)
        local[vertno] = np.arange(len(vertno))
        for a, b in ((0, 1), (1, 2), (2, 0)):
            i, j = local[tris[:, a]], local[tris[:, b]]
            keep = (i >= 0) & (j >= 0)
            rows += [i[keep] + offset, j[keep] + offset]
            cols += [j[keep] + offset, i[keep] + offset]
        offset += len(vertno)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    adj = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(offset, offset))
    adj.data[:] = 1.0  # duplicates were summed
    return adj


def source_adjacency(src):
    """Mesh adjacency of the used vertices of a surface source space.

    Uses :func:`mne.spatial_src_adjacency` (triangulation ``use_tris`` of the
    used vertices) and removes its self loops. Source spaces MNE's helper does
    not handle (no ``use_tris``) fall back to the same construction from
    ``tris``.

    Parameters
    ----------
    src : mne.SourceSpaces
        Surface source space (one or two hemispheres).

    Returns
    -------
    adjacency : scipy.sparse.csr_matrix, shape (n_sources, n_sources)
        Symmetric 0/1 matrix without self loops; sources ordered as in the
        forward (left hemisphere vertices, then right).
    """
    try:
        with warnings.catch_warnings():
            # MNE warns when some vertices of use_tris are not in use (holes);
            # edges to unused vertices are dropped either way.
            warnings.simplefilter("ignore")
            adj = mne.spatial_src_adjacency(src, verbose="error")
        adj = sparse.csr_matrix(adj, dtype=np.float64)
    except (RuntimeError, ValueError):
        logger.info("Building the source adjacency from the triangulation")
        adj = _tris_adjacency(src)
    adj.setdiag(0)
    adj.eliminate_zeros()
    adj.data[:] = 1.0
    adj.sort_indices()
    if any(s["nuse"] < len(np.unique(s["use_tris"])) for s in src if s["use_tris"] is not None):
        logger.info("Some vertices of the source-space triangulation are not used; "
                    "the adjacency has holes there.")
    return adj


def ring_hops(adjacency, radius, seeds=None):
    """Mesh distances in hops (neighbour rings), up to ``radius``.

    Breadth-first distances from :func:`scipy.sparse.csgraph.dijkstra`
    (``unweighted=True``, ``limit=radius``), kept sparse.

    Parameters
    ----------
    adjacency : scipy.sparse matrix | scipy.sparse array, shape (n_sources, n_sources)
        Source-space adjacency (non-zero where two sources are neighbours;
        the diagonal is ignored).
    radius : int
        Largest number of rings (>= 0).
    seeds : array of int, shape (n_seeds,) | None
        Sources to measure from; ``None`` is all of them.

    Returns
    -------
    hops : scipy.sparse.csr_matrix of int16, shape (n_seeds, n_sources)
        ``hops[i, j]`` is the ring of source ``j`` around seed ``i`` where
        that ring is at most ``radius``, stored explicitly also when it is 0
        (the seed itself); no entry beyond ``radius``. Sorted indices.
        ``n_seeds = n_sources`` when ``seeds`` is None.
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    graph = sparse.csr_array(adjacency != 0)
    n = graph.shape[0]
    seeds = np.arange(n) if seeds is None else np.atleast_1d(seeds)
    indptr, indices, data = [np.zeros(1, np.int64)], [], []
    for lo in range(0, len(seeds), _CHUNK):  # dense (chunk, n_sources) distances at a time
        dist = dijkstra(graph, indices=seeds[lo:lo + _CHUNK], unweighted=True, limit=radius)
        rows, cols = np.nonzero(np.isfinite(dist))
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(rows, minlength=len(dist))))
        indices.append(cols)
        data.append(dist[rows, cols].astype(np.int16))
    return sparse.csr_matrix((np.concatenate(data), np.concatenate(indices),
                              np.concatenate(indptr)), shape=(len(seeds), n))


# -- patches -------------------------------------------------------------------------
#: Spatial profiles over a patch, as a function of the distance d to its seed:
#: the simulators' Gaussian (σ = max d / 2), a wider Gaussian (σ = max d) and
#: a flat patch (as :func:`mne.simulation.select_source_in_label` patches).
PROFILES = ("gaussian", "wide", "flat")


def gaussian_profile(dist, width=0.5):
    """Amplitude ``exp(-0.5 (d / sigma)^2)`` with ``sigma = width * max(d)``.

    Parameters
    ----------
    dist : array, shape (n,)
        Distances to the seed.
    width : float
        ``sigma`` relative to the largest distance: 0.5, the simulators'
        (``exp(-2)`` at the farthest source); 1, the wide profile.

    Returns
    -------
    amplitude : array, shape (n,)
        1 at the seed.
    """
    sigma = width * dist.max()
    if sigma == 0:
        return np.ones_like(dist)
    return np.exp(-0.5 * (dist / sigma) ** 2)


def patch_profile(dist, kind):
    """Amplitude over a patch of one of :data:`PROFILES`.

    Parameters
    ----------
    dist : array, shape (n,)
        Distances of the patch's sources to its seed.
    kind : str
        One of :data:`PROFILES`.

    Returns
    -------
    amplitude : array, shape (n,)
        1 at the seed.
    """
    if kind == "gaussian":
        return gaussian_profile(dist)
    if kind == "wide":
        return gaussian_profile(dist, width=1.0)
    if kind == "flat":
        return np.ones_like(dist)
    raise ValueError(f"profile must be one of {PROFILES}, got {kind!r}")


def patch_atoms(pos, adjacency, orders=(0, 5), profiles=("gaussian", "wide")):
    """Every patch of a source mesh: each order, each profile, each seed.

    A patch of order ``k`` is the seed and its ``k`` neighbour rings
    (:func:`ring_hops`), weighted by :func:`patch_profile` of the Euclidean
    distance to the seed; order 0 (a single source) is kept once, whatever the
    profiles. Rows are ordered by order, then profile, then seed.

    Parameters
    ----------
    pos : array, shape (n_sources, 3)
        Source positions.
    adjacency : scipy.sparse matrix, shape (n_sources, n_sources)
        Mesh adjacency.
    orders : tuple of int
        Inclusive range of orders.
    profiles : tuple of str
        Of :data:`PROFILES`.

    Returns
    -------
    atoms : scipy.sparse.csr_matrix, shape (n_patches, n_sources)
        Profile of each patch (1 at its seed), sorted indices.
    seeds, patch_orders : array of int64, shape (n_patches,)
    """
    pos = np.asarray(pos, np.float64)
    n = len(pos)
    hops = ring_hops(adjacency, orders[1])
    rows = np.repeat(np.arange(n), np.diff(hops.indptr))
    dist = np.linalg.norm(pos[hops.indices] - pos[rows], axis=1)
    blocks, seeds, patch_orders = [], [], []
    for order in range(orders[0], orders[1] + 1):
        inside = hops.data <= order
        r, c, d = rows[inside], hops.indices[inside], dist[inside]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
        for kind in (profiles[:1] if order == 0 else profiles):
            vals = np.concatenate([patch_profile(d[a:b], kind)
                                   for a, b in zip(bounds[:-1], bounds[1:])])
            blocks.append(sparse.csr_matrix((vals, c, bounds), shape=(n, n)))
            seeds.append(np.arange(n))
            patch_orders.append(np.full(n, order))
    atoms = sparse.vstack(blocks, format="csr")
    atoms.sort_indices()
    return atoms, np.concatenate(seeds).astype(np.int64), np.concatenate(
        patch_orders).astype(np.int64)
