"""Source-space geometry: positions, mesh adjacency and neighbour rings."""

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import shortest_path

from .._forward import check_surface_forward, gaussian_profile, ring_hops, source_adjacency

__all__ = ["SourceGeometry", "gaussian_profile", "source_adjacency"]

_DEFAULT_MAX_RING = 12  # covers patches of order <= 5 plus the 2-ring margin


class SourceGeometry:
    """Positions and neighbourhood structure of the sources of a forward.

    Parameters
    ----------
    pos : array, shape (n_sources, 3)
        Source positions in metres.
    adjacency : scipy.sparse matrix, shape (n_sources, n_sources)
        Symmetric mesh adjacency without self loops.
    vertices : list of array
        Vertex numbers per hemisphere (as in :class:`mne.SourceEstimate`).
    subject : str | None
        Subject name.

    Attributes
    ----------
    pos : array, shape (n_sources, 3)
    adjacency : scipy.sparse.csr_matrix, shape (n_sources, n_sources)
    vertices : list of array
    subject : str | None
    n_sources : int
    """

    def __init__(self, pos, adjacency, vertices, subject=None):
        self.pos = np.asarray(pos, dtype=np.float64)
        adjacency = sparse.csr_matrix(adjacency, dtype=np.float64)
        if adjacency.shape != (len(self.pos), len(self.pos)):
            raise ValueError(
                f"adjacency has shape {adjacency.shape}, expected "
                f"{(len(self.pos), len(self.pos))}")
        self.adjacency = adjacency
        self.vertices = [np.asarray(v, dtype=np.int64) for v in vertices]
        self.subject = subject
        self._hops = None
        self._radius = 0

    @classmethod
    def from_forward(cls, fwd):
        """Geometry of a fixed-orientation surface forward.

        Parameters
        ----------
        fwd : mne.Forward
            Fixed-orientation forward on a surface source space.

        Returns
        -------
        geometry : SourceGeometry
        """
        check_surface_forward(fwd)
        src = fwd["src"]
        vertices = [np.asarray(s["vertno"]) for s in src]
        return cls(fwd["source_rr"], source_adjacency(src), vertices,
                   subject=src[0].get("subject_his_id"))

    @property
    def n_sources(self):
        """Number of sources."""
        return len(self.pos)

    def __repr__(self):
        n_edges = self.adjacency.nnz // 2
        return f"<SourceGeometry | {self.n_sources} sources, {n_edges} edges>"

    def _ensure_radius(self, radius):
        if self._hops is None or radius > self._radius:
            radius = max(int(radius), _DEFAULT_MAX_RING)
            self._hops = ring_hops(self.adjacency, radius)
            self._radius = radius

    def rings(self, seed, order):
        """Sources within ``order`` neighbour rings of ``seed`` (seed included).

        Parameters
        ----------
        seed : int
            Source index.
        order : int
            Number of rings (0 gives the seed alone).

        Returns
        -------
        idx : array of int64, shape (n_patch,)
            Sorted source indices.
        """
        order = int(order)
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        self._ensure_radius(order)
        hops = self._hops
        lo, hi = hops.indptr[seed], hops.indptr[seed + 1]
        idx = hops.indices[lo:hi]
        return idx[hops.data[lo:hi] <= order].astype(np.int64)

    def ring_mask(self, seeds, orders):
        """Boolean mask of the union of balls ``rings(seed, order)``.

        Parameters
        ----------
        seeds : array of int, shape (k,)
        orders : array of int, shape (k,)

        Returns
        -------
        mask : array of bool, shape (n_sources,)
        """
        mask = np.zeros(self.n_sources, bool)
        for seed, order in zip(np.atleast_1d(seeds), np.atleast_1d(orders)):
            mask[self.rings(seed, order)] = True
        return mask

    def ring_distance(self, seed, idx=None):
        """Number of mesh edges (rings) from ``seed`` to other sources.

        Parameters
        ----------
        seed : int
            Source index.
        idx : array of int | None
            Target sources; ``None`` for all.

        Returns
        -------
        dist : array of float, shape (n_targets,)
            Hop distances; ``inf`` where unreachable (other hemisphere).
        """
        dist = shortest_path(self.adjacency, indices=int(seed), unweighted=True,
                             directed=False)
        return dist if idx is None else dist[np.asarray(idx)]

    def patch_amplitude(self, seed, patch):
        """Gaussian spatial profile over a patch.

        ``exp(-0.5 (d / sigma)**2)`` with ``d`` the Euclidean distance to the
        seed and ``sigma = max(d) / 2``.

        Parameters
        ----------
        seed : int
        patch : array of int, shape (n_patch,)

        Returns
        -------
        amplitude : array, shape (n_patch,)
        """
        return gaussian_profile(np.linalg.norm(self.pos[patch] - self.pos[seed], axis=1))

