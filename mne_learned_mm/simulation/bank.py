"""Patch bank: training topographies at the speed of a matrix product.

A sample of the SEREEGA-style simulator is a window whose time axis repeats
one spatial configuration; a spatial start network learns from *spatial*
diversity. :class:`PatchBank` precomputes, for one forward, every extended
patch the simulators can draw (each seed × each order × each spatial
profile, with the patch geometry of :func:`~.sources.draw_patches` and
:meth:`~.geometry.SourceGeometry.patch_amplitude`) and its leadfield image.
:meth:`PatchBank.sample` then draws a batch of single topographies as signed
mixtures of 1-3 non-overlapping patches, with white and brain-background
sensor noise at drawn SNRs: gathers and one small product per sample.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .._docs import fill_doc
from .._forward import PROFILES, patch_atoms
from .geometry import SourceGeometry
from .leadfield import make_leadfield


@fill_doc
@dataclass
class BankConfig:
    """What :meth:`PatchBank.sample` draws.

    The patch orders and spatial profiles are those of the :class:`PatchBank`.

    Attributes
    ----------
    %(n_patches)s
    snr_db : tuple of float
        Interval of the sensor SNR (dB), drawn uniformly per topography.
    background : tuple of float
        Interval of the brain-background share of the noise power (the rest
        is white), drawn uniformly per topography.
    min_amplitude : float
        Each later patch gets ``|a| ~ U(min_amplitude, 1)`` relative to the first.
    %(margin)s
    draw : str
        How a patch is drawn: ``"patch"``, uniformly over the bank's patches
        (an order with more profiles is drawn more often), or ``"order"``,
        the order uniformly first, as the simulators draw it, then a profile
        and a seed.
    order_weights : tuple of float | None
        With ``draw="order"``: relative probability of each of the bank's
        orders, lowest first (``None``: equal).
    """

    n_patches: tuple = (1, 3)
    snr_db: tuple = (0.0, 30.0)
    background: tuple = (0.0, 0.5)
    min_amplitude: float = 0.1
    margin: int = 2
    draw: str = "patch"
    order_weights: tuple = None

    def __post_init__(self):
        if self.draw not in ("patch", "order"):
            raise ValueError(f'draw must be "patch" or "order", got {self.draw!r}')
        if self.order_weights is not None and (
                self.draw != "order" or min(self.order_weights) < 0
                or sum(self.order_weights) <= 0):
            raise ValueError('order_weights needs draw="order" and non-negative weights '
                             f'that do not all vanish, got {self.order_weights!r}')


class PatchBank:
    """Every patch of a forward and its sensor image.

    Parameters
    ----------
    geometry : SourceGeometry
    L : array, shape (n_channels, n_sources)
        Average-referenced leadfield.
    orders : tuple of int
        Inclusive range of patch orders (neighbour rings; 0 is a single source).
    profiles : tuple of str
        Spatial profiles (:data:`PROFILES`); order 0 is kept once.

    Attributes
    ----------
    seeds, orders : array of int64, shape (n_patches,)
    index : Tensor of int64, shape (n_patches, max_size)
        Source indices of each patch, padded with 0.
    weight : Tensor, shape (n_patches, max_size)
        Profile of each patch (0 on the padding), peak 1.
    images : Tensor, shape (n_channels, n_patches)
        ``L[:, patch] @ profile``, the patch's noise-free topography.
    hops : Tensor of int16, shape (n_sources, n_sources)
        Ring distance between sources (capped), for the non-overlap rule.
    """

    def __init__(self, geometry, L, orders=(0, 5), profiles=PROFILES):
        self.geometry = geometry
        self.L = torch.as_tensor(np.asarray(L), dtype=torch.float32)
        atoms, self.seeds, self.orders = patch_atoms(geometry.pos, geometry.adjacency,
                                                     orders, profiles)
        counts = np.diff(atoms.indptr)
        slot = np.arange(atoms.nnz) - np.repeat(atoms.indptr[:-1], counts)
        self.index = torch.zeros(atoms.shape[0], counts.max(), dtype=torch.int64)
        self.weight = torch.zeros(atoms.shape[0], counts.max())
        rows = torch.as_tensor(np.repeat(np.arange(atoms.shape[0]), counts))
        self.index[rows, slot] = torch.as_tensor(atoms.indices, dtype=torch.int64)
        self.weight[rows, slot] = torch.as_tensor(atoms.data, dtype=torch.float32)
        n_patches = len(self.seeds)
        self.images = self.sources(torch.arange(n_patches)[:, None],
                                   torch.ones(n_patches, 1)) @ self.L.T
        self.images = self.images.T.contiguous()
        geometry._ensure_radius(2 * orders[1] + 4)  # the farthest non-overlap rule
        hops = geometry._hops.toarray()  # ring numbers; 0 on the diagonal and where unreached
        unreached = hops == 0
        np.fill_diagonal(unreached, False)
        hops[unreached] = np.iinfo(np.int16).max  # beyond the radius
        self.hops = torch.as_tensor(hops, dtype=torch.int16)
        self._seed_t = torch.as_tensor(self.seeds)
        self._order_t = torch.as_tensor(self.orders)
        # draw="order": each order equally likely, then its patches uniformly
        self._order_weight = 1 / torch.bincount(self._order_t)[self._order_t].double()
        w, U = np.linalg.eigh(np.asarray(L, np.float64) @ np.asarray(L, np.float64).T)
        self.background_factor = torch.as_tensor(U * np.sqrt(np.clip(w, 0, None)),
                                                 dtype=torch.float32)

    @classmethod
    def from_forward(cls, fwd, **kwargs):
        """Bank of a fixed-orientation surface forward (all its EEG channels).

        Parameters
        ----------
        fwd : mne.Forward
        **kwargs
            Passed to :class:`PatchBank`.

        Returns
        -------
        bank : PatchBank
        """
        return cls(SourceGeometry.from_forward(fwd), make_leadfield(fwd), **kwargs)

    @property
    def n_patches(self):
        """Number of patches in the bank."""
        return len(self.seeds)

    @property
    def n_sources(self):
        """Number of sources."""
        return self.geometry.n_sources

    @property
    def device(self):
        """Where the bank's tensors are (:meth:`to`)."""
        return self.L.device

    def to(self, device):
        """Move the bank's tensors to ``device`` (in place), e.g. to sample on a GPU.

        :meth:`sample` then needs a :class:`torch.Generator` on the same device.

        Parameters
        ----------
        device : str | torch.device

        Returns
        -------
        bank : PatchBank
            ``self``.
        """
        for name in ("L", "index", "weight", "images", "hops", "_seed_t", "_order_t",
                     "_order_weight", "background_factor"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __repr__(self):
        return (f"<PatchBank | {self.n_patches} patches, {self.L.shape[0]} channels, "
                f"{self.n_sources} sources>")

    def sources(self, which, amplitude):
        """Source vectors of patch mixtures.

        Parameters
        ----------
        which : Tensor of int64, shape (n, k)
            Bank indices of the patches of each mixture.
        amplitude : Tensor, shape (n, k)
            Signed amplitude of each patch (0 drops it).

        Returns
        -------
        x : Tensor, shape (n, n_sources)
        """
        n = which.shape[0]
        vals = self.weight[which] * amplitude[..., None]
        x = torch.zeros(n, self.n_sources, dtype=vals.dtype, device=vals.device)
        return x.scatter_add_(1, self.index[which].reshape(n, -1), vals.reshape(n, -1))

    def draw_mixtures(self, gen, n, config):
        """Bank indices and signed amplitudes of ``n`` patch mixtures.

        The first patch is uniform over the bank; each later one is redrawn
        (up to 4 times, then dropped) until its seed is at least
        ``o_prev + o + margin`` rings from every earlier seed, as in
        :func:`~.sources.draw_patches`.

        Parameters
        ----------
        gen : torch.Generator
        n : int
        config : BankConfig

        Returns
        -------
        which : Tensor of int64, shape (n, k_max)
        amplitude : Tensor, shape (n, k_max)
            0 where a mixture has fewer patches.
        """
        k_lo, k_hi = config.n_patches
        k = torch.randint(k_lo, k_hi + 1, (n,), generator=gen, device=gen.device)
        which = self._draw_patches(gen, (n, k_hi), config)
        active = torch.arange(k_hi, device=gen.device)[None] < k[:, None]
        for j in range(1, k_hi):
            for attempt in range(5):
                ok = self._apart(which, j, config.margin)
                if attempt == 4 or bool(ok[active[:, j]].all()):
                    break
                redraw = active[:, j] & ~ok
                which[redraw, j] = self._draw_patches(gen, (int(redraw.sum()),), config)
            active[:, j] &= ok
        amp = torch.rand(n, k_hi, generator=gen, device=gen.device) * (1 - config.min_amplitude)
        amp = config.min_amplitude + amp
        amp[:, 0] = 1.0
        sign = torch.randint(0, 2, (n, k_hi), generator=gen, device=gen.device) * 2.0 - 1.0
        return which, amp * sign * active

    def _draw_patches(self, gen, shape, config):
        """Bank indices, uniform over the patches or over the (weighted) orders."""
        if config.draw == "patch":
            return torch.randint(self.n_patches, shape, generator=gen, device=gen.device)
        weight = self._order_weight
        if config.order_weights is not None:
            per_order = torch.as_tensor(config.order_weights, dtype=weight.dtype,
                                        device=weight.device)
            if len(per_order) != int(self._order_t.max() - self._order_t.min()) + 1:
                raise ValueError(f"order_weights has {len(per_order)} weights for the "
                                 f"bank's orders {int(self._order_t.min())}-"
                                 f"{int(self._order_t.max())}")
            weight = weight * per_order[self._order_t - self._order_t.min()]
        n = int(np.prod(shape))
        return torch.multinomial(weight, n, replacement=True, generator=gen).reshape(shape)

    def _apart(self, which, j, margin):
        seeds, orders = self._seed_t[which], self._order_t[which]
        ok = torch.ones(which.shape[0], dtype=torch.bool, device=which.device)
        for i in range(j):
            dist = self.hops[seeds[:, i], seeds[:, j]].long()
            ok &= dist >= orders[:, i] + orders[:, j] + margin
        return ok

    def sample(self, gen, n, config=None, keep=None, transform=None, return_patches=False):
        """A batch of noisy single topographies and their sources.

        Parameters
        ----------
        gen : torch.Generator
            On the bank's device (:meth:`to`).
        n : int
            Number of topographies.
        config : BankConfig | None
        keep : Tensor of bool, shape (n_channels,) | None
            Channels to keep (a montage subset); the data and images are
            average-referenced over them and zero elsewhere.
        transform : Tensor, shape (n_channels, n_channels) | None
            Sensor transform of the clean topographies instead of that
            reference, e.g. a whitener whose range is orthogonal to the
            reference (the kept channels are its non-zero rows); the noise
            is then white in the transformed space.
        return_patches : bool
            Also return the mixtures' patches (:meth:`draw_mixtures`).

        Returns
        -------
        y : Tensor, shape (n, n_channels)
            Noisy topographies (unit norm).
        x : Tensor, shape (n, n_sources)
            Their sources.
        which, amplitude : Tensor, shape (n, k_max)
            Only with ``return_patches``: bank indices and signed amplitudes
            (0 for absent patches).
        """
        config = BankConfig() if config is None else config
        if transform is not None:
            keep = transform.abs().sum(1) > 0
        which, amp = self.draw_mixtures(gen, n, config)
        x = self.sources(which, amp)
        clean = torch.einsum("cnk,nk->nc", self.images[:, which], amp)
        white = torch.randn(n, self.L.shape[0], generator=gen, device=gen.device)
        back = (torch.randn(n, self.L.shape[0], generator=gen, device=gen.device)
                @ self.background_factor.T)
        share = _uniform(gen, n, config.background)
        noise = (_unit_rows(_reference(white, keep)) * (1 - share).sqrt()[:, None]
                 + _unit_rows(_reference(back, keep)) * share.sqrt()[:, None])
        clean = _reference(clean, keep) if transform is None else clean @ transform.T
        snr = 10 ** (_uniform(gen, n, config.snr_db) / 20)
        y = clean + _unit_rows(noise) * (clean.norm(dim=1) / snr)[:, None]
        return (_unit_rows(y), x) + ((which, amp) if return_patches else ())


def _uniform(gen, n, interval):
    lo, hi = interval
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)


def _reference(y, keep):
    """Average reference over the kept channels, zero on the others."""
    if keep is None:
        return y - y.mean(1, keepdim=True)
    w = keep.to(y.dtype)
    return (y - (y * w).sum(1, keepdim=True) / w.sum()) * w


def _unit_rows(y):
    return y / y.norm(dim=1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)


__all__ = ["PROFILES", "BankConfig", "PatchBank"]
