"""Amortized start: a spatial network maps a linear source image to sources.

The MM solve ends near where it starts, so the start carries the accuracy.
:class:`StartNetwork` is trained on millions of single noisy topographies
(:class:`~mne_learned_mm.simulation.bank.PatchBank`): its input is the
sLORETA image ``K y`` of a topography for whatever channels it has, so one
network serves every montage on its source space; its output is a source
pattern. A residual pass applies the same network to what that pattern
leaves unexplained, where a weak patch next to a strong one shows (a
learned deflation, :meth:`StartNetwork.patterns`). :func:`amortized_start`
handles time explicitly: it keeps the
temporal components of ``Y`` above the noise (Gavish-Donoho threshold),
applies the network to each component's topography and fits the time
courses of the resulting patterns by least squares. Where one source
(:func:`select_single_source`), or as many single sources or patches of the
training bank's profiles as the window has components (:func:`select_source_set`,
:func:`rap_music`), explain the data better than the network's patterns, by
nested-model tests, they replace them. Where neither does, a patch pursuit
(:func:`pursue_patches`, :func:`patch_pursuit`) may fit one patch more than the
window has components, for patches whose time courses are nearly proportional.
Where the noise is colored in time (a whitened 1/f background), the patch choices
fit only the components that a patch explains and allow for the noise along their
time courses (:func:`choice_noise`).

Sign equivariance is exact: the network sees its input with the sign that
makes its largest-magnitude entry positive and returns its output with the
sign restored, so data ``−Y`` give ``−X0``.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .._docs import fill_doc
from .init import fitted_scale, same_tensor, tikhonov_operator

#: rotations of the temporal components (:attr:`StartConfig.rotation`)
ROTATIONS = ("none", "varimax")


@dataclass
class StartConfig:
    """Architecture and temporal handling of the amortized start.

    Attributes
    ----------
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers.
    reg : float
        Regularisation of the sLORETA image (see
        :func:`~.init.tikhonov_operator`).
    max_rank : int
        Most temporal components kept.
    residual_passes : int
        Passes of the network over the residual after the first
        (:meth:`StartNetwork.patterns`); inference only.
    members : int
        Networks averaged (an ensemble; each trained on its own draw of the
        patch bank).
    rotation : "none" | "varimax"
        Rotation of the kept temporal components before the network sees
        their topographies (:func:`varimax_rotation`); inference only.
    single_source : float | None
        Share of a topography that its best single source must explain to
        replace the network's pattern, which it must also out-explain while
        the pattern adds little beside it (:func:`select_single_source`);
        inference only. ``None``: never.
    rank_threshold : float
        Scale of the Gavish-Donoho threshold below which temporal components
        are dropped (:func:`gavish_donoho_rank`); inference only. 1 is their
        threshold, optimal for the squared error of the denoised matrix; a
        little lower keeps weaker components, which can carry a weak patch.
    source_set : float | None
        Share of a window's kept components that as many single sources
        (:func:`rap_music`) must explain to replace all its patterns, which
        they must also out-explain while the patterns add little beside them
        (:func:`select_source_set`); windows of two or more components,
        inference only. ``None``: never.
    patch_set : float | None
        The same choice among the patches of the network's source space (its
        training bank's profiles on every seed, grown by ``patch_orders`` rings,
        :attr:`StartNetwork.patches`), for windows of one or more components,
        with the noise's share allowed beside the bar (``noise_margin``);
        inference only, and only where the patches are set. ``None``: never.
    patch_orders : tuple of int
        First and last neighbour-ring order of the patches that the patch set
        chooses among (built from the fitted forward's source space by
        :func:`~mne_learned_mm.pretrained.source_patches`, with the training
        bank's profiles). The bank's are 0-5; the larger ones let a source
        larger than any the network was trained on be taken whole. Inference
        only.
    noise_margin : float
        Multiplies the noise's expected share of the kept components off the
        chosen patches (:func:`noise_share`), which the patch set's bar allows
        on top of ``1 − patch_set``: at a high SNR the bar is ``patch_set``,
        at a low one it leaves the noise out. 1: the share that white noise of
        the variance left beside the kept components (:func:`noise_variance`)
        puts there; 0: a fixed bar. Inference only.
    patch_pursuit : int | None
        Patches beyond a window's rank that the patch pursuit may fit
        (:func:`pursue_patches`): in windows that the network keeps (neither
        set above took them), ``r`` to ``r + patch_pursuit`` patches found by
        :func:`patch_pursuit` are fitted beside the network's patterns where
        they fit the kept components as well as the noise allows
        (``noise_margin`` times its share) and better than the patterns; the
        number of patches is chosen by a penalised fit. Two patches whose time
        courses are nearly proportional make one component, which no one
        pattern and no ``r`` patches explain. Inference only, with the patches
        set. ``None``: never.
    colored_noise : float | None
        Where the noise along a window's first component's time course
        (:func:`colored_noise_variance`) exceeds this many times the white level
        (:func:`noise_variance`), the window's noise counts as colored in time (a 1/f
        brain background left by whitening, which the Gavish-Donoho rank takes for
        several components): the patch set and the pursuit then fit only its
        leading components that one patch explains ``rank_share`` of, with the noise
        along each one's time course in their bars (:func:`choice_noise`); the
        network still sees every kept component. On the benchmarks' white-noise
        windows the ratio stayed below 1.15, on whitened 1/f backgrounds of 500
        samples it was 2.0-2.4; in short windows, where the kept components hold the
        slow noise themselves, it is also taken beside the source-like components.
        Inference only. ``None``: the noise is taken as white.
    rank_share : float
        Share of a component that its best patch must explain to count, in a window
        with colored noise, among the components the choices fit
        (:func:`source_like`). The best of the 19 260 patches explains 0.1-0.2 of a
        white random topography of 90 channels, 0.2-0.4 of a whitened background
        component, 0.5-1 of a component that a source dominates. Inference only.
    """

    hidden: int = 1024
    depth: int = 3
    reg: float = 1.0 / 9.0
    max_rank: int = 6
    residual_passes: int = 1
    members: int = 1
    rotation: str = "none"
    single_source: float | None = 0.95
    rank_threshold: float = 0.9
    source_set: float | None = 0.98
    patch_set: float | None = 0.995
    patch_orders: tuple = (0, 7)
    noise_margin: float = 1.5
    patch_pursuit: int | None = 1
    colored_noise: float | None = 1.3
    rank_share: float = 0.4

    def __post_init__(self):
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        for key in ("single_source", "source_set", "patch_set", "rank_share"):
            share = getattr(self, key)
            if share is not None and not 0 < share <= 1:
                raise ValueError(f"{key} must be in (0, 1] or None, got {share!r}")
        if self.colored_noise is not None and not self.colored_noise > 0:
            raise ValueError(f"colored_noise must be None or positive, got "
                             f"{self.colored_noise!r}")
        if not self.rank_threshold > 0:
            raise ValueError(f"rank_threshold must be positive, got {self.rank_threshold!r}")
        self.patch_orders = tuple(int(order) for order in self.patch_orders)  # JSON: a list
        first, last = self.patch_orders
        if not 0 <= first <= last:
            raise ValueError(f"patch_orders must be two orders 0 <= first <= last, got "
                             f"{self.patch_orders!r}")
        if not self.noise_margin >= 0:
            raise ValueError(f"noise_margin must be >= 0, got {self.noise_margin!r}")
        if self.patch_pursuit is not None and not (
                int(self.patch_pursuit) == self.patch_pursuit >= 0 and self.noise_margin > 0):
            raise ValueError(f"patch_pursuit must be None or an integer >= 0 (with "
                             f"noise_margin > 0), got {self.patch_pursuit!r}")


class StartNetwork(nn.Module):
    """Sign-equivariant spatial network ``z ↦ x`` (one topography at a time).

    The mean of ``config.members`` MLPs (``n_sources → depth × hidden GELU →
    n_sources``), applied to the canonically signed, normalised image.

    Parameters
    ----------
    n_sources : int
    config : StartConfig | None

    Attributes
    ----------
    patches : Tensor, shape (n_patches, n_sources) | None
        Sparse profiles of the patches that ``config.patch_set`` chooses among
        (set from the source space, e.g. by
        :meth:`mne_learned_mm.LearnedMMInverse.fit`); None: no patch choice.
    """

    def __init__(self, n_sources, config=None):
        super().__init__()
        self.config = cfg = StartConfig() if config is None else config
        self.nets = nn.ModuleList(_mlp(n_sources, cfg) for _ in range(cfg.members))
        self.patches = None
        self._of_leadfield = None

    def patch_images(self, L):
        """Sensor images ``L pᵢ`` of the patches, kept for the next call with the same ``L``.

        Parameters
        ----------
        L : Tensor, shape (n_sensors, n_sources)

        Returns
        -------
        images : Tensor, shape (n_sensors, n_patches)
        """
        return self._leadfield_cache(L)[1]

    def sensor_dims(self, L):
        """Dimension of the sensor space that ``L`` spans (its rank: the channels less
        the reference and the projectors), kept as :meth:`patch_images` is."""
        return self._leadfield_cache(L)[2]

    def image_norms(self, L):
        """Squared norms of :meth:`patch_images`, shape (n_patches,), kept as they are."""
        return self._leadfield_cache(L)[3]

    def _leadfield_cache(self, L):
        cached = self._of_leadfield
        if cached is None or not same_tensor(cached[0], L):
            patches = self.patches.to(device=L.device, dtype=L.dtype)
            images = torch.sparse.mm(patches, L.T).T.contiguous()
            cached = self._of_leadfield = (L, images, int(torch.linalg.matrix_rank(L)),
                                           images.square().sum(0))
        return cached

    def net(self, z):
        """Mean of the members' outputs."""
        return sum(net(z) for net in self.nets) / len(self.nets)

    def load_state_dict(self, state_dict, strict=True):
        """:meth:`torch.nn.Module.load_state_dict`; also reads one-network weights
        written before ensembles (``net.*``, models bank-v1 to bank-v3)."""
        state_dict = {(f"nets.0.{k[4:]}" if k.startswith("net.") else k): v
                      for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict)

    def forward(self, z):
        """Source pattern of each source image.

        Parameters
        ----------
        z : Tensor, shape (n, n_sources)
            Linear source images (any scale).

        Returns
        -------
        x : Tensor, shape (n, n_sources)
            Source patterns (unit-free), ``x(−z) = −x(z)``.
        """
        sign = canonical_sign(z)[:, None]
        z = sign * z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        return sign * self.net(z)

    def residual_pass(self, x, y, L, K):
        """``x + β f(K r)``: the network's pattern of the residual ``r = y − L x``, added
        with its least-squares amplitude ``β = ⟨r, L d⟩ / ‖L d‖²`` (a learned deflation).

        Parameters
        ----------
        x : Tensor, shape (n, n_sources)
            Patterns fitted to ``y``.
        y : Tensor, shape (n, n_sensors)
        L : Tensor, shape (n_sensors, n_sources)
        K : Tensor, shape (n_sources, n_sensors)

        Returns
        -------
        x : Tensor, shape (n, n_sources)
        """
        r = y - x @ L.T
        d = self(r @ K.T)
        return x + fitted_scale(r, d @ L.T)[:, None] * d

    def patterns(self, y, L, K):
        """Source pattern of each topography: the first pass and the residual passes.

        The first pattern is ``x = f(K y)`` (:meth:`forward`). Each residual
        pass fits it by least squares, ``α = ⟨y, L x⟩ / ‖L x‖²``, applies the
        same network to the image of the residual ``r = y − α L x`` (where a
        weak patch is no longer masked by the strong one) and adds that
        pattern ``d = f(K r)`` with its own least-squares amplitude:
        ``x ← α x + β d``, ``β = ⟨r, L d⟩ / ‖L d‖²``. The fit never gets worse
        (``‖r − β L d‖ ≤ ‖r‖``). Last, a single source replaces the pattern
        where it explains the topography better
        (:func:`select_single_source`, ``config.single_source``).

        Parameters
        ----------
        y : Tensor, shape (n, n_sensors)
            Topographies (referenced, whitened; any scale).
        L : Tensor, shape (n_sensors, n_sources)
            Leadfield of the same channels.
        K : Tensor, shape (n_sources, n_sensors)
            Its sLORETA operator.

        Returns
        -------
        x : Tensor, shape (n, n_sources)
            In the units of ``y / L``; ``x(−y) = −x(y)``.
        """
        x = self(y @ K.T)
        for _ in range(self.config.residual_passes):
            x = self.residual_pass(fitted_scale(y, x @ L.T)[:, None] * x, y, L, K)
        if self.config.single_source is not None:
            x = select_single_source(x, y, L, self.config.single_source)
        return x


def explained_share(y, image):
    """Share of each topography that a fitted multiple of an image explains.

    ``⟨y, g⟩² / (‖y‖² ‖g‖²)``, the squared cosine (0 where either is zero).

    Parameters
    ----------
    y, image : Tensor, shape (n, n_sensors)

    Returns
    -------
    share : Tensor, shape (n,)
    """
    tiny = torch.finfo(y.dtype).tiny
    norms = y.square().sum(1) * image.square().sum(1)
    return (y * image).sum(1).square() / norms.clamp_min(tiny)


@fill_doc
def select_single_source(x, y, L, min_share, max_pattern_gain=0.3):
    """Replace a pattern by its topography's best single source where that fits better.

    The best single source ``q = argmax_q ⟨y, l_q⟩² / ‖l_q‖²`` (the dipole
    scan, exact for one noise-free source) replaces the pattern ``x`` by its
    least-squares amplitude ``⟨y, l_q⟩ / ‖l_q‖²`` where

    - it explains at least ``min_share`` of ``y``, and at least as much as
      ``x``'s image ``L x`` does (:func:`explained_share`), and
    - the pattern adds little beside it: fitting ``y`` by ``l_q`` and ``L x``
      together removes less than ``max_pattern_gain`` of the single source's
      residual (a nested-model test; where a rank-one component holds several
      patches, the pattern explains the ones the single source leaves out).

    Extended patterns fit better than any one source and stay; a focal source
    the network blurred or put one ring off is found exactly.
    ``x(−y) = −x(y)`` when ``x`` is odd in ``y``.

    Parameters
    ----------
    x : Tensor, shape (n, n_sources)
        Patterns, in the units of ``y / L``.
    y : Tensor, shape (n, n_sensors)
        Their topographies.
    %(L_min_share)s

    Returns
    -------
    x : Tensor, shape (n, n_sources)
    """
    tiny = torch.finfo(y.dtype).tiny
    norms = L.norm(dim=0).clamp_min(tiny)
    proj = (y @ L) / norms  # ⟨y, l_q⟩ / ‖l_q‖
    best = proj.abs().argmax(1, keepdim=True)
    peak = proj.gather(1, best)
    energy = y.square().sum(1).clamp_min(tiny)
    share = peak[:, 0].square() / energy
    image = x @ L.T
    both = torch.stack([L.T[best[:, 0]], image], 2)  # (n, n_sensors, 2)
    residual_both = unexplained_share(y[:, :, None], both)
    rounding = 100 * torch.finfo(y.dtype).eps  # residuals below it are a perfect fit
    use = ((share >= min_share) & (share >= explained_share(y, image))
           & (residual_both > (1 - max_pattern_gain) * (1 - share) - rounding))
    single = torch.zeros_like(x).scatter_(1, best, peak / norms[best])
    return torch.where(use[:, None], single, x)


def rap_music(C, L, n_found, norms=None):
    """Sources whose leadfield columns span a subspace best, found one at a time.

    Recursively applied and projected MUSIC (Mosher & Leahy 1999): the
    ``j``-th source maximises the subspace correlation
    ``‖Uⱼᵀ P l_q‖² / ‖P l_q‖²``, with ``P`` the projector off the columns
    found so far and ``Uⱼ`` the top ``r − j`` left singular vectors of
    ``P C``. Exact for ``r`` noise-free sources whose time courses are
    independent, whatever their mixing into the components.

    Parameters
    ----------
    C : Tensor, shape (n_batch, n_sensors, r)
        A basis of each sample's signal subspace (its spatial components).
    L : Tensor, shape (n_sensors, n_sources)
        The leadfield, or any dictionary of sensor images (the patches' images
        of :meth:`StartNetwork.patch_images`); its columns are the candidates.
    n_found : int
        Sources to find, at most ``r``.
    norms : Tensor, shape (n_sources,) | None
        ``L``'s squared column norms, if known.

    Returns
    -------
    sources : Tensor of int64, shape (n_batch, n_found)
    """
    r = C.shape[2]
    norms = L.square().sum(0) if norms is None else norms
    Q = torch.zeros(C.shape[0], 0, dtype=torch.long, device=C.device)
    for j in range(n_found):
        R = C
        if j:  # off the span of the columns found so far
            W = torch.linalg.qr(L.T[Q].transpose(1, 2))[0]
            R = C - W @ (W.transpose(1, 2) @ C)
        U = _top_left_singular(R, r - j)
        Q = torch.cat([Q, _column_scores(U, L.T[None], Q, norms).argmax(1)[:, None]], 1)
    return Q


def _times_leadfield(A, L):
    """``A @ L`` for a batch ``A`` (n_batch, k, m) and one matrix ``L`` (m, p), as one
    matrix product (torch's batched product with a broadcast ``L`` is several times
    slower on CPU)."""
    B, k, m = A.shape
    return (A.reshape(B * k, m) @ L).reshape(B, k, -1)


def _top_left_singular(C, k):
    """The top ``k`` left singular vectors of each ``C`` (n_batch, n, r), from the
    eigendecomposition of ``Cᵀ C`` (r × r)."""
    evals, V = torch.linalg.eigh(C.transpose(1, 2) @ C)
    V, evals = V[..., -k:], evals[:, -k:]
    return (C @ V) / evals.clamp_min(torch.finfo(C.dtype).tiny).sqrt()[:, None]


def unexplained_share(C, G):
    """Share of ``‖C‖²`` off the span of ``G``'s columns, per sample.

    Parameters
    ----------
    C : Tensor, shape (n_batch, n_sensors, r)
    G : Tensor, shape (n_batch, n_sensors, k)

    Returns
    -------
    share : Tensor, shape (n_batch,)
    """
    Gt = G.transpose(1, 2)
    fitted = G @ (torch.linalg.pinv(Gt @ G, hermitian=True) @ (Gt @ C))
    return (C - fitted).square().sum((1, 2)) / C.square().sum((1, 2)).clamp_min(
        torch.finfo(C.dtype).tiny)


@fill_doc
def select_source_set(F, comps, keep, L, min_share, max_pattern_gain=0.3, *, patches=None,
                      images=None, min_rank=2, noise=None):
    """Replace a window's patterns by as many single sources (or patches) where they fit better.

    For a window of ``r ≥ min_rank`` kept components ``C``, :func:`rap_music`
    finds ``r`` sources ``Q`` (or ``r`` patches, among ``patches``); their
    images ``G_Q`` replace the patterns ``F`` (one unit source or one patch per
    column; :func:`start_factors` fits the time courses) where, as
    :func:`select_single_source` asks of one component,

    - they explain at least ``min_share`` of ``‖C‖²`` (less the noise's
      expected share off them, :func:`noise_share`, with ``noise``), and at
      least as much as the patterns' images ``L F`` do, and
    - the patterns add little beside them: fitting ``C`` by ``G_Q`` and
      ``L F`` together removes less than ``max_pattern_gain`` of ``G_Q``'s
      residual.

    Focal sources active together are mixed in every component (the rotation
    cannot tell them apart), so no one component's topography is a single
    source's; their subspace is spanned by their columns all the same. The
    same holds for patches of the given shapes.
    Depends on ``C``'s span only, so ``F`` is even in the data.

    Parameters
    ----------
    F : Tensor, shape (n_batch, n_sources, r)
        Patterns, zero beyond each window's rank.
    comps : Tensor, shape (n_batch, n_sensors, r)
        Spatial components, zero beyond each window's rank.
    keep : Tensor, shape (n_batch, r)
        1 for the kept components.
    %(L_min_share)s
    patches : Tensor, shape (n_patches, n_sources) | None
        Sparse patch profiles to choose among; None: single sources.
    images : tuple of Tensor | None
        With ``patches``: ``L`` times each patch, shape (n_sensors, n_patches),
        and their squared norms, shape (n_patches,)
        (:meth:`StartNetwork.patch_images`, :meth:`StartNetwork.image_norms`).
    min_rank : int
        Fewest components of a window that the choice looks at.
    noise : tuple of (Tensor, int) | None
        Noise variance per entry, shape (n_batch,) or per component, shape
        (n_batch, r) (:func:`noise_variance`, :func:`choice_noise`), and the sensor
        space's dimension; None: a fixed bar.

    Returns
    -------
    F : Tensor, shape (n_batch, n_sources, r)
    """
    D, norms = (L, None) if patches is None else images
    out = F
    rank = keep.sum(1).long()
    rounding = 100 * torch.finfo(F.dtype).eps
    for k in torch.unique(rank).tolist():
        if k < max(min_rank, 1):
            continue
        sel = torch.nonzero(rank == k).squeeze(1)
        C = comps[sel, :, :k]
        Q = rap_music(C, D, k, norms)
        GQ = D.T[Q].transpose(1, 2)  # (b, n_sensors, k)
        LF = _times_leadfield(F[sel, :, :k].transpose(1, 2), L.T).transpose(1, 2)
        res = unexplained_share(C, GQ)
        bar = min_share if noise is None else min_share - noise_share(C, noise[0][sel], noise[1])
        use = ((1 - res >= bar) & (res <= unexplained_share(C, LF))
               & (unexplained_share(C, torch.cat([GQ, LF], 2))
                  > (1 - max_pattern_gain) * res - rounding))
        if bool(use.any()):
            out = out.clone() if out is F else out
            chosen = Q[use]
            if patches is None:
                new = torch.zeros_like(out[sel[use], :, :k]).scatter_(
                    1, chosen[:, None], torch.ones_like(chosen[:, None], dtype=F.dtype))
            else:
                rows = patches.index_select(0, chosen.flatten()).to_dense()
                new = rows.to(F.dtype).reshape(len(chosen), k, -1).transpose(1, 2)
            out[sel[use], :, :k] = new
    return out


def noise_share(C, variance, n_dims, n_fitted=None):
    """Share of ``‖C‖²`` that white noise puts off the span of ``k`` sources fitted to it.

    Each of the ``r`` components ``C = Y V`` of a window carries the noise of
    ``Y`` along its unit time course: ``variance`` per dimension of the
    ``n_dims``-dimensional sensor space, of which ``n_dims − k`` lie off the
    span of ``k`` fitted images. So ``r (n_dims − k) σ² / ‖C‖²``, or
    ``(n_dims − k) Σⱼ σⱼ² / ‖C‖²`` with a variance ``σⱼ²`` along each component's
    time course (noise colored in time, :func:`choice_noise`).

    Parameters
    ----------
    C : Tensor, shape (n_batch, n_sensors, r)
    variance : Tensor, shape (n_batch,) or (n_batch, r)
    n_dims : int
    n_fitted : int | None
        ``k``, the images fitted; None: ``r``.

    Returns
    -------
    share : Tensor, shape (n_batch,)
    """
    r = C.shape[2]
    k = r if n_fitted is None else n_fitted
    total = r * variance if variance.dim() == 1 else variance[:, :r].sum(1)
    return (n_dims - k) * total / C.square().sum((1, 2)).clamp_min(
        torch.finfo(C.dtype).tiny)


def colored_noise_variance(Y, Y_r, Vh, keep, n_dims, order=16):
    """Noise variance along each component's time course, for noise that is not white in time.

    ``vᵀ Γ v``, with ``Γ`` the temporal covariance per sensor dimension of an
    autoregressive model of order ``order`` fitted (Yule-Walker) to what the kept
    components leave, ``R = Y − Y_r``, pooled over the sensors: its autocovariances
    up to lag ``order`` set the whole spectrum ``S(ω) = s² / |1 − Σⱼ aⱼ e^{−ijω}|²``,
    and ``vᵀ Γ v = Σ_ω S(ω) |v̂(ω)|²`` on a grid of ``n ≥ 2 n_times`` frequencies.
    The estimate is a little low (``R`` lacks the kept directions, and with them
    their share of the slow noise; for white noise 0.8-0.9 of the white level,
    :func:`noise_variance`); a 1/f background gives several times the white level
    along slow time courses.

    Parameters
    ----------
    Y, Y_r : Tensor, shape (n_batch, n_sensors, n_times)
    Vh : Tensor, shape (n_batch, r, n_times)
        Unit time courses (zero rows for dropped components).
    keep : Tensor, shape (n_batch, r)
    n_dims : int
        Dimension of the sensor space.
    order : int
        Of the autoregressive model (at most a quarter of ``n_times``).

    Returns
    -------
    variance : Tensor, shape (n_batch, r)
        Zero for the dropped components.
    """
    R = Y - Y_r
    B, _, t = R.shape
    order = max(min(order, t // 4), 1)
    r = keep.sum(1)
    dof = ((n_dims - r) * (t - r)).clamp_min(1)
    n = 1 << (2 * t - 1).bit_length()  # no circular wrap-around below lag t
    acf = torch.fft.irfft(torch.fft.rfft(R, n=n).abs().square().sum(1), n=n)
    acf = acf[:, :order + 1] / dof[:, None]  # biased autocovariances, (B, p + 1)
    lags = torch.arange(order, device=Y.device)
    toeplitz = acf[:, (lags[:, None] - lags[None]).abs()]  # (B, p, p), positive definite
    eye = torch.eye(order, dtype=Y.dtype, device=Y.device)
    scale = acf[:, :1, None].clamp_min(torch.finfo(Y.dtype).tiny)
    a = torch.linalg.solve(toeplitz + 1e-9 * scale * eye, acf[:, 1:, None])[..., 0]
    innovation = (acf[:, 0] - (a * acf[:, 1:]).sum(1)).clamp_min(0)  # (B,)
    filt = torch.cat([torch.ones(B, 1, dtype=Y.dtype, device=Y.device), -a], 1)
    spectrum = innovation[:, None] / torch.fft.rfft(filt, n=n).abs().square().clamp_min(
        torch.finfo(Y.dtype).tiny)  # (B, n // 2 + 1)
    weights = torch.full((n // 2 + 1,), 2.0, dtype=Y.dtype, device=Y.device)
    weights[0] = weights[-1] = 1.0
    power = torch.fft.rfft(Vh, n=n).abs().square()  # (B, r, n // 2 + 1)
    return (power * (spectrum * weights)[:, None]).sum(2) / n * keep


def noise_variance(Y, Y_r, keep, n_dims):
    """Noise variance per entry of each window, from what its kept components leave.

    ``‖Y − Y_r‖² / ((n_dims − r)(n_times − r))``: the energy of the dropped
    components over the dimensions of the noise they hold (white noise in an
    ``n_dims``-dimensional sensor space, less the ``r`` kept components on
    either side).

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    Y_r : Tensor, shape (n_batch, n_sensors, n_times)
        The kept components' sum (:func:`temporal_components`).
    keep : Tensor, shape (n_batch, r)
    n_dims : int
        Dimension of the sensor space (:meth:`StartNetwork.sensor_dims`).

    Returns
    -------
    variance : Tensor, shape (n_batch,)
    """
    r = keep.sum(1)
    dof = ((n_dims - r) * (Y.shape[2] - r)).clamp_min(1)
    return (Y - Y_r).square().sum((1, 2)) / dof


def patch_pursuit(C, D, n_found, n_starts=8, n_sweeps=2, n_pool=128, norms=None):
    """Columns of ``D`` whose span fits each ``C`` best: greedy picks, then cyclic re-picks.

    Each pick is the column that most reduces ``C``'s residual off the span of
    the others (an orthogonal matching pursuit step, :func:`_column_scores`):
    first one at a time, then each in turn given the rest, ``n_sweeps``
    times (alternating least squares over the dictionary; the residual never
    grows). The search starts from each of the ``n_starts`` columns that fit
    ``C`` best alone and keeps the best fit: with two patches mixed in one
    component, the best single column often lies between them. The greedy
    picks look at every column; the re-picks look at the ``n_pool`` best of
    each of those looks. Unlike :func:`rap_music` it finds more columns than
    ``C`` has: patches whose time courses are nearly proportional share a
    component.

    Parameters
    ----------
    C : Tensor, shape (n_batch, n_sensors, r)
    D : Tensor, shape (n_sensors, n_columns)
        The candidates' sensor images (:meth:`StartNetwork.patch_images`).
    n_found : int
        Columns to find, at most ``n_sensors``.
    n_starts, n_sweeps, n_pool : int
        Columns to start from, rounds of re-picks, and the columns each look
        adds to the re-picks' pool.
    norms : Tensor, shape (n_columns,) | None
        ``D``'s squared column norms, if known.

    Returns
    -------
    columns : Tensor of int64, shape (n_batch, n_found)
    """
    B, Dt = C.shape[0], D.T[None]
    norms = D.square().sum(0) if norms is None else norms
    first = _column_scores(C, Dt, None, norms)
    n_starts, n_pool = min(n_starts, D.shape[1]), min(n_pool, D.shape[1])
    starts = first.topk(max(n_starts, n_pool), 1).indices
    if n_found == 1:  # the best single column
        return starts[:, :1]
    S = n_starts
    Cs = C.repeat_interleave(S, 0)
    Q = starts[:, :S].reshape(-1, 1)
    looks = [starts[:, :n_pool].repeat_interleave(S, 0)]
    while Q.shape[1] < n_found:
        score = _column_scores(Cs, Dt, Q, norms)
        best = score.topk(n_pool if n_sweeps else 1, 1).indices
        looks.append(best)
        Q = torch.cat([Q, best[:, :1]], 1)
    if n_sweeps:  # re-picks among the columns the looks rated best
        pool = torch.cat([Q] + looks, 1)  # (B S, p): positions 0..k-1 are Q
        Dp, pool_norms = D.T[pool], norms[pool]
        local = torch.arange(n_found, device=C.device).expand(len(Q), -1)
        for _ in range(n_sweeps):
            for j in range(n_found):
                local = local.clone()
                rest = torch.cat([local[:, :j], local[:, j + 1:]], 1)
                score = _column_scores(Cs, Dp, rest, pool_norms)
                taken = (pool[:, :, None] == pool.gather(1, rest)[:, None]).any(2)
                local[:, j] = score.masked_fill(taken, -1.0).argmax(1)
        Q = pool.gather(1, local)
    res = unexplained_share(Cs, D.T[Q].transpose(1, 2)).reshape(B, S)
    return Q[res.argmin(1) + S * torch.arange(B, device=C.device)]


def _column_scores(C, Dt, Q, norms):
    """How much of each ``C`` (n_batch, n, r) each column of ``Dt`` (n_batch or 1,
    n_columns, n; squared norms ``norms``) would explain beside the columns ``Q``
    (n_batch, m) | None: ``‖Rᵀ d‖² / ‖P d‖²``, with ``R`` and ``P d`` off the span of
    those; the columns in ``Q`` score −1. Shape (n_batch, n_columns)."""
    def times(A):  # Aᵀ Dtᵀ, (b, k, n_columns); one matrix product where Dt is shared
        if Dt.shape[0] > 1:
            return A.transpose(1, 2) @ Dt.transpose(1, 2)
        return _times_leadfield(A.transpose(1, 2), Dt[0].T)

    if Q is None or Q.shape[1] == 0:
        return times(C).square().sum(1) / norms
    G = Dt.expand(C.shape[0], -1, -1).gather(1, Q[..., None].expand(-1, -1, Dt.shape[2]))
    W = torch.linalg.qr(G.transpose(1, 2))[0]  # (b, n, m), orthonormal
    R = C - W @ (W.transpose(1, 2) @ C)
    r = R.shape[2]
    both = times(torch.cat([R, W], 2)).square()
    off = (norms - both[:, r:].sum(1)).clamp_min(torch.finfo(C.dtype).eps * norms)
    return (both[:, :r].sum(1) / off).scatter(1, Q, -1.0)


def pursue_patches(F, comps, keep, L, patches, images, noise, free, extra, margin,
                   penalty=2.0, screen=5.0, max_patches=4):
    """Fit ``r`` to ``r + extra`` patches beside the network's patterns where they fit.

    In each ``free`` window of ``r`` kept components ``C``, :func:`patch_pursuit`
    finds ``k`` patches for each ``k`` from ``r`` to ``r + extra`` (at most
    ``max_patches`` and the slots of ``F``; the full search only where its
    greedy start leaves less than ``screen`` times the bar below), and ``k``
    minimises the residual ``‖C − G_Q B‖²`` plus ``penalty · ln(n_patches)
    σ²`` per patch: 2 is the risk inflation criterion (Foster & George 1994),
    about the most that noise alone lets the best of ``n_patches`` candidates
    explain. The patches are taken where they leave at most ``margin`` times
    the noise's share off ``k`` images (:func:`noise_share`) and no more than
    the patterns' images ``L F`` do; each component then becomes its
    least-squares fit by the patches and the network's patterns together.
    The choice depends on ``C``'s span and ``L F``'s only, and ``X0 = F A``
    stays odd in the data.

    Parameters
    ----------
    F, comps, keep, L
        As in :func:`select_source_set`.
    patches : Tensor, shape (n_patches, n_sources)
        Sparse patch profiles.
    images : tuple of Tensor
        ``L`` times each patch, shape (n_sensors, n_patches), and their
        squared norms, shape (n_patches,) (:meth:`StartNetwork.patch_images`,
        :meth:`StartNetwork.image_norms`).
    noise : tuple of (Tensor, int)
        Noise variance per entry, shape (n_batch,) or per component, shape
        (n_batch, r) (:func:`noise_variance`, :func:`choice_noise`), and the sensor
        space's dimension.
    free : Tensor of bool, shape (n_batch,)
        Windows the choice may change.
    extra : int
        Patches beyond the rank.
    margin : float
        Multiplies the noise's share.
    penalty : float
        Multiplies ``ln(n_patches) σ²``, the price of each patch.
    screen : float
        Multiplies the bar for the greedy search's fit, below which the full
        search runs.
    max_patches : int
        Most patches fitted; windows of a higher rank are left as they are (the
        search's cost grows with ``k``).

    Returns
    -------
    F : Tensor, shape (n_batch, n_sources, r_max)
        In a window it takes, each component's least-squares fit by the chosen
        patches and the network's patterns together (zero after the ``r``
        components). A pattern unlike the patches gets the weight of what
        they leave; one that resembles them shares theirs (the minimum-norm
        split), so the estimate keeps some of the network's spread, which
        ranks the sources near a missed or wrongly sized patch above the
        rest, as the network did.
    """
    variance, n_dims = noise
    rank = keep.sum(1).long()
    images, norms = images
    penalty = penalty * torch.log(torch.tensor(float(images.shape[1])))
    out = F
    for r in torch.unique(rank[free]).tolist():
        sel = torch.nonzero(free & (rank == r)).squeeze(1)
        if not 1 <= r <= max_patches or len(sel) == 0:
            continue
        C, var = comps[sel, :, :r], variance[sel]
        energy = C.square().sum((1, 2)).clamp_min(torch.finfo(C.dtype).tiny)
        LF = _times_leadfield(F[sel, :, :r].transpose(1, 2), L.T).transpose(1, 2)
        scores, shares, found = [], [], []
        k_max = min(r + extra, F.shape[2], max_patches)
        # the greedy picks for k patches are the first k of those for k_max
        greedy = patch_pursuit(C, images, k_max, n_starts=1, n_sweeps=0, norms=norms)
        for k in range(r, k_max + 1):
            bar = margin * noise_share(C, var, n_dims, k)
            Q, res = _search_patches(C, images, norms, greedy[:, :k], screen * bar)
            mean_var = var if var.dim() == 1 else var[:, :r].mean(1)
            scores.append(res + penalty * k * mean_var / energy)
            shares.append(res / bar)
            found.append((Q, res))
        k = torch.stack(scores).argmin(0)  # index into found: k - r
        res = torch.stack([f[1] for f in found]).gather(0, k[None])[0]
        fits = torch.stack(shares).gather(0, k[None])[0] <= 1
        use = fits & (res <= unexplained_share(C, LF))
        if bool(use.any()):
            out = out.clone() if out is F else out
            for w, j in zip(sel[use].tolist(), k[use].tolist()):
                cols = found[j][0][(sel == w).nonzero()[0, 0]]
                basis = torch.cat([patches.index_select(0, cols).to_dense().to(F.dtype).T,
                                   F[w, :, :r]], 1)  # (n_sources, k + r)
                out[w, :, :r] = basis @ _joint_fit(L @ basis, comps[w, :, :r])
    return out


def _search_patches(C, images, norms, Q, near):
    """``k`` patches for each ``C`` and the share they leave (:func:`pursue_patches`): the
    greedy picks ``Q`` (n_batch, k), or :func:`patch_pursuit` from several starts where
    these leave less than ``near``."""
    k = Q.shape[1]
    res = unexplained_share(C, images.T[Q].transpose(1, 2))
    near = res <= near
    if k == 1 or not bool(near.any()):
        return Q, res
    Q, res = Q.clone(), res.clone()
    Q[near] = patch_pursuit(C[near], images, k, norms=norms)
    res[near] = unexplained_share(C[near], images.T[Q[near]].transpose(1, 2))
    return Q, res


def _joint_fit(G, C):
    """Least-squares coefficients of ``C`` (n, r) on the columns of ``G`` (n, m), the
    minimum-norm ones on unit columns (in float64): near-collinear columns share the
    weight whatever their scale."""
    scale = G.norm(dim=0).clamp_min(torch.finfo(G.dtype).tiny).double()
    B = torch.linalg.pinv(G.double() / scale, rtol=1e-6) @ C.double()
    return (B / scale[:, None]).to(G.dtype)


def _unchanged(F, before):
    """Windows whose patterns a choice left as they were, shape (n_batch,)."""
    return ~(F != before).flatten(1).any(1)


def half_weight_network(network):
    """A copy of ``network`` whose linear layers keep their weights in float16.

    torch's dynamic quantization to float16
    (``torch.ao.quantization.quantize_dynamic`` with ``dtype=torch.float16``):
    the weights are packed as float16 for fbgemm, which converts them inside
    its matrix product and accumulates in float32; inputs and outputs stay
    float32, each row computed on its own. A solve on CPU is bound by reading
    the weights (a few topographies against ~56 MB of float32 weights for
    three members), and this reads half the bytes: the outputs are float32's
    to ~1e-6 (the shipped weights are stored in float16 anyway). Dynamic
    quantization to int8 is faster on large batches but quantizes each
    batch's activations on their common range, so an epoch's sources would
    depend on the other epochs of its batch: not used. Inference only (no
    gradients), CPU only.

    Parameters
    ----------
    network : StartNetwork
        On CPU.

    Returns
    -------
    half : StartNetwork | None
        None when this torch or its quantized engine cannot run float16
        weights on this CPU.
    """
    import warnings

    quantize = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize is None or torch.backends.quantized.engine == "none":
        return None
    with warnings.catch_warnings():  # torch points eager-mode users to torchao
        warnings.simplefilter("ignore")
        try:
            half = quantize(network, {nn.Linear}, dtype=torch.float16)
            with torch.no_grad():
                half(torch.ones(1, network.nets[0][0].in_features))
        except (RuntimeError, NotImplementedError):  # no fp16 kernels in this engine
            return None
    return half


def _mlp(n_sources, config):
    sizes = [n_sources] + [config.hidden] * config.depth
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    layers.append(nn.Linear(sizes[-1], n_sources))
    return nn.Sequential(*layers)


def canonical_sign(z):
    """Sign of each row's largest-magnitude entry (+1 for a zero row).

    Parameters
    ----------
    z : Tensor, shape (n, m)
        One vector per row.

    Returns
    -------
    sign : Tensor, shape (n,)
    """
    peak = z.gather(1, z.abs().argmax(1, keepdim=True))[:, 0]
    return torch.where(peak < 0, -1.0, 1.0).to(z.dtype)


def gavish_donoho_rank(S, shape, max_rank, scale=1.0):
    """Number of singular values above the optimal hard threshold.

    Gavish & Donoho (2014), unknown noise level:
    ``τ = ω(β) · median(σ)`` with ``β = min(n, t) / max(n, t)`` and their
    polynomial approximation of ``ω``; ``scale`` multiplies ``τ``.

    Parameters
    ----------
    S : Tensor, shape (n_batch, k)
        Singular values, descending.
    shape : tuple of int
        ``(n_sensors, n_times)`` of the matrices.
    max_rank : int
    scale : float
        Of the threshold (:attr:`StartConfig.rank_threshold`).

    Returns
    -------
    rank : Tensor of int64, shape (n_batch,)
        At least 1, at most ``max_rank``.
    """
    beta = min(shape) / max(shape)
    omega = 0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43
    tau = scale * omega * S.median(dim=1, keepdim=True).values
    return (S > tau).sum(1).clamp(1, max_rank)


@fill_doc
def temporal_components(Y, max_rank, threshold=1.0):
    """Temporal components of each ``Y`` above the noise (Gavish-Donoho).

    The rank of each sample is :func:`gavish_donoho_rank`'s, from the
    singular values of :func:`singular_pairs`.

    Parameters
    ----------
    %(Y_max_rank)s
    threshold : float
        Scale of the Gavish-Donoho threshold.

    Returns
    -------
    comps : Tensor, shape (n_batch, n_sensors, r)
        Spatial components ``s_k u_k``, zero beyond each sample's rank
        (``r = min(max_rank, n_sensors, n_times)``).
    Vh : Tensor, shape (n_batch, r, n_times)
        Their time courses ``v_kᵀ``.
    keep : Tensor, shape (n_batch, r)
        1 for the kept components, 0 for the others.
    """
    S, W = singular_pairs(Y)
    r = min(max_rank, S.shape[1])
    rank = gavish_donoho_rank(S, Y.shape[1:], r, threshold)
    keep = (torch.arange(r, device=Y.device)[None] < rank[:, None]).to(Y.dtype)
    W = W[..., :r]
    if Y.shape[2] < Y.shape[1]:  # W = V: the components are Y v_k = s_k u_k
        return (Y @ W) * keep[:, None], W.transpose(1, 2), keep
    inv = torch.where(keep > 0, 1 / S[:, :r].clamp_min(torch.finfo(Y.dtype).tiny), 0)
    return W * (S[:, :r] * keep)[:, None], (W.transpose(1, 2) @ Y) * inv[..., None], keep


def singular_pairs(Y):
    """Singular values and the singular vectors of the smaller side, descending.

    From the eigendecomposition of the smaller Gram matrix (``Y Yᵀ`` or
    ``Yᵀ Y``), about twice as fast as a full SVD for the batches of small
    matrices the start sees; the small singular values only enter through
    their median (:func:`gavish_donoho_rank`).

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)

    Returns
    -------
    S : Tensor, shape (n_batch, k)
        ``k = min(n_sensors, n_times)``.
    W : Tensor, shape (n_batch, n_sensors, k) or (n_batch, n_times, k)
        Left singular vectors ``U`` when ``n_times >= n_sensors``, else the
        right ones ``V``.
    """
    Yt = Y.transpose(1, 2)
    evals, W = torch.linalg.eigh(Yt @ Y if Y.shape[2] < Y.shape[1] else Y @ Yt)
    return evals.flip(1).clamp_min(0).sqrt(), W.flip(2)


def varimax_rotation(V, n_iter=50, tol=1e-7):
    """Orthogonal rotation that makes orthonormal time courses sparse (varimax).

    Maximises ``Σ_jk (V R)_jk⁴`` over orthogonal ``R`` (Kaiser's varimax; with
    orthonormal columns the criterion is also quartimax, and the kurtosis
    contrast of symmetric ICA in the whitened subspace) by the usual
    fixed-point iteration ``R ← U Wᵀ`` with ``U S Wᵀ`` the SVD of
    ``Vᵀ (V R)³``. Sources that are active at different latencies (evoked
    components, spikes, bursts) are mixed by the SVD, which orders its
    components by energy; after the rotation each time course is close to
    one of theirs and its topography close to one source's.

    Parameters
    ----------
    V : Tensor, shape (n_batch, n_times, r)
        Orthonormal columns.
    n_iter : int
        Most iterations.
    tol : float
        Stop when the criterion's relative change is below it for every sample.

    Returns
    -------
    R : Tensor, shape (n_batch, r, r)
        Orthogonal; ``R(V D) = D R(V) D`` for a diagonal ``D`` of signs, so
        flipping a component's sign flips its rotated counterpart.
    """
    B, _, r = V.shape
    R = torch.eye(r, dtype=V.dtype, device=V.device).expand(B, r, r)
    last = None
    for _ in range(n_iter):
        rotated = V @ R
        crit = rotated.pow(4).sum((1, 2))
        if last is not None and bool(((crit - last).abs() <= tol * crit).all()):
            break
        last = crit
        U, _, Wh = torch.linalg.svd(V.transpose(1, 2) @ rotated.pow(3))
        R = U @ Wh
    return R


def rotate_components(comps, Vh, keep):
    """Rotate each sample's kept components by :func:`varimax_rotation`.

    ``comps @ Vh`` is unchanged; samples with one kept component are left
    as they are.

    Parameters
    ----------
    comps : Tensor, shape (n_batch, n_sensors, r)
    Vh : Tensor, shape (n_batch, r, n_times)
        Orthonormal rows where kept (:func:`temporal_components`).
    keep : Tensor, shape (n_batch, r)

    Returns
    -------
    comps, Vh : Tensor
        Same shapes, rotated within each sample's kept components.
    """
    comps, Vh = comps.clone(), Vh.clone()
    rank = keep.sum(1).long()
    for k in torch.unique(rank).tolist():
        if k < 2:
            continue
        sel = torch.nonzero(rank == k).squeeze(1)
        R = varimax_rotation(Vh[sel, :k].transpose(1, 2))
        comps[sel, :, :k] = comps[sel, :, :k] @ R
        Vh[sel, :k] = R.transpose(1, 2) @ Vh[sel, :k]
    return comps, Vh


@fill_doc
def denoise(Y, max_rank, threshold=1.0):
    """Projection of each ``Y`` on its temporal components above the noise.

    The sum ``comps @ Vh`` of :func:`temporal_components`.

    Parameters
    ----------
    %(Y_max_rank)s
    threshold : float
        Scale of the Gavish-Donoho threshold.

    Returns
    -------
    Y_r : Tensor, same shape as ``Y``
        Denoised data.
    rank : Tensor of int64, shape (n_batch,)
        Number of kept components of each sample.
    """
    comps, Vh, keep = temporal_components(Y, max_rank, threshold)
    return comps @ Vh, keep.sum(1).long()


def amortized_start(Y, L, network, *, K=None):
    """Start ``X0`` from the network applied to each temporal component of ``Y``.

    ``X0 = F A``, the product of :func:`start_factors`.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Average-referenced (whitened) data.
    L : Tensor, shape (n_sensors, n_sources)
        Leadfield of the same channels.
    network : StartNetwork
    K : Tensor, shape (n_sources, n_sensors) | None
        Precomputed sLORETA operator of ``L``.

    Returns
    -------
    X0 : Tensor, shape (n_batch, n_sources, n_times)
        In the units of ``Y / L``.
    """
    F, A = start_factors(Y, L, network, K=K)
    return F @ A


def start_factors(Y, L, network, *, K=None):
    """Source patterns ``F`` and time courses ``A`` of the start ``X0 = F A``.

    With ``Y ≈ Σ_k s_k u_k v_kᵀ`` the components above the noise
    (:func:`gavish_donoho_rank`, at most ``max_rank``), the network maps each
    spatial component's sLORETA image ``K s_k u_k`` to a source pattern
    ``f_k`` (:meth:`StartNetwork.patterns`: with its residual passes; the
    components first rotated by :func:`varimax_rotation` when
    ``network.config.rotation == "varimax"``), and
    the time courses come from least squares:
    ``A = (L F)⁺ Y_r`` with ``F = [f_1 … f_r]``. So ``X0`` has
    the rank of the denoised data and each time sample is the least-squares
    fit of its data within the span of the patterns (``X0(−Y) = −X0(Y)``; the
    sign ambiguity of the SVD cancels in ``F A``). Kept as factors, ``X0``
    costs ``r (n_sources + n_times)`` numbers instead of
    ``n_sources n_times``.

    Parameters
    ----------
    Y, L, network, K
        As in :func:`amortized_start`.

    Returns
    -------
    F : Tensor, shape (n_batch, n_sources, r)
        Source patterns, zero for the dropped components
        (``r = min(max_rank, n_sensors, n_times)``).
    A : Tensor, shape (n_batch, r, n_times)
        Their time courses, zero rows for the dropped components.
    """
    cfg = network.config
    K = tikhonov_operator(L, cfg.reg, "sloreta") if K is None else K
    comps, Vh, keep = temporal_components(Y, cfg.max_rank, cfg.rank_threshold)  # dropped: 0
    if cfg.rotation == "varimax":
        comps, Vh = rotate_components(comps, Vh, keep)
    Y_r = comps @ Vh
    B, n, r = comps.shape
    kept = torch.nonzero(keep.reshape(-1)).squeeze(1)  # the network sees kept ones only
    topo = comps.transpose(1, 2).reshape(B * r, n)[kept]
    F = torch.zeros(B * r, L.shape[1], dtype=Y.dtype, device=Y.device).index_copy(
        0, kept, network.patterns(topo, L, K))
    F = F.reshape(B, r, -1).transpose(1, 2)  # (B, s, r), zero for dropped components
    network_F = F
    if cfg.source_set is not None:
        F = select_source_set(F, comps, keep, L, cfg.source_set)
    if network.patches is not None and (cfg.patch_set, cfg.patch_pursuit) != (None, None):
        n_dims = network.sensor_dims(L)
        images = (network.patch_images(L), network.image_norms(L))
        keep_c, variance = keep, None
        if cfg.noise_margin > 0:
            keep_c, variance = choice_noise(Y, comps, Vh, keep, images, n_dims, cfg)
        chosen = F
        if cfg.patch_set is not None:
            noise = None if variance is None else (cfg.noise_margin * variance, n_dims)
            chosen = select_source_set(F, comps, keep_c, L, cfg.patch_set,
                                       patches=network.patches, images=images,
                                       min_rank=1, noise=noise)
        if cfg.patch_pursuit is not None:
            chosen = pursue_patches(chosen, comps, keep_c, L, network.patches, images,
                                    (variance, n_dims),
                                    free=_unchanged(chosen, network_F),
                                    extra=cfg.patch_pursuit,
                                    margin=cfg.noise_margin)
        F = _deflate_changed(chosen, F, comps, keep, L, K, network)
    return F, torch.linalg.pinv(L @ F) @ Y_r  # A: zero rows for dropped components


def choice_noise(Y, comps, Vh, keep, images, n_dims, config):
    """The components that the patch choices fit, and the noise variance along each.

    Where the noise is white in time, the kept components and the variance per
    entry that the others leave (:func:`noise_variance`) for each. Where it is
    not, the leading components that one patch explains at least
    ``config.rank_share`` of (:func:`source_like`), and for each the larger of the
    variance along its time course (:func:`colored_noise_variance`) and the white
    level beside them. The noise counts as colored (a 1/f brain background or
    sensor noise, which the Gavish-Donoho rank takes for several components) where
    the variance along the first component's time course exceeds
    ``config.colored_noise`` times the white level, beside the kept components or,
    where the kept components hold the slow noise themselves (a short window),
    beside the source-like ones.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    comps, Vh, keep
        As :func:`temporal_components` returns them.
    images : tuple of Tensor
        The patches' images and their squared norms.
    n_dims : int
        Dimension of the sensor space.
    config : StartConfig

    Returns
    -------
    keep : Tensor, shape (n_batch, r)
        1 for the components that the choices fit.
    variance : Tensor, shape (n_batch, r)
        Noise variance per entry along each of them (0 for the others).
    """
    Y_r = comps @ Vh
    white = noise_variance(Y, Y_r, keep, n_dims)
    variance = white[:, None] * keep
    if config.colored_noise is None:
        return keep, variance
    ratio = config.colored_noise
    colored, white_c = colored_noise_variance(Y, Y_r, Vh, keep, n_dims), variance.clone()
    is_colored = colored[:, 0] > ratio * white
    keep_s, several = keep.clone(), keep.sum(1) > 1
    if bool(several.any()):
        keep_s[several] = source_like(comps[several], keep[several], *images,
                                      config.rank_share)
    cut = keep_s.sum(1) < keep.sum(1)
    if bool(cut.any()):  # the noise beside the source-like components only
        k_s = keep_s[cut]
        Y_s = (comps[cut] * k_s[:, None]) @ Vh[cut]
        white_c[cut] = noise_variance(Y[cut], Y_s, k_s, n_dims)[:, None] * k_s
        colored[cut] = colored_noise_variance(Y[cut], Y_s, Vh[cut], k_s, n_dims)
        # in a short window the kept components may hold the slow noise themselves,
        # which then shows beside the source-like ones only
        is_colored[cut] |= colored[cut, 0] > ratio * white_c[cut, 0]
    keep_c = torch.where(is_colored[:, None], keep_s, keep)
    return keep_c, torch.where(is_colored[:, None], torch.maximum(colored, white_c),
                               variance)


def source_like(comps, keep, images, norms, min_share):
    """Keep the leading components that one patch explains at least ``min_share`` of.

    The share of a component ``c`` that its best patch explains,
    ``max_p ⟨c, g_p⟩² / (‖c‖² ‖g_p‖²)``, is about ``2 ln(n_patches) / n_dims``
    for a topography of white noise (the most that the best of many candidates
    explains by chance) and near 1 for a component that a source dominates, so it
    tells the components of a source from those of a noise that is spatially white
    (whitened), whatever its time courses.

    Parameters
    ----------
    comps : Tensor, shape (n_batch, n_sensors, r)
    keep : Tensor, shape (n_batch, r)
    images : Tensor, shape (n_sensors, n_patches)
        The patches' sensor images.
    norms : Tensor, shape (n_patches,)
        Their squared norms.
    min_share : float

    Returns
    -------
    keep : Tensor, shape (n_batch, r)
        The first component always, then each while it and those before it pass.
    """
    proj = _times_leadfield(comps.transpose(1, 2), images).square() / norms  # (B, r, P)
    share = proj.amax(2) / comps.square().sum(1).clamp_min(torch.finfo(comps.dtype).tiny)
    passing = (share >= min_share).to(keep.dtype)
    passing[:, 0] = 1
    return keep * passing.cumprod(1)


def _deflate_changed(F, before, comps, keep, L, K, network):
    """Where a choice changed a window's patterns, each component's pattern becomes its
    least-squares fit by them, then gets the network's residual passes
    (:meth:`StartNetwork.residual_pass`), as the network's own patterns do: a weak patch
    that the chosen patches leave out is found in what they leave unexplained. Unit
    norm (the time courses are fitted next), so components of any size stay well
    conditioned."""
    if F is before:  # the choice took no window
        return F
    w = torch.nonzero(~_unchanged(F, before)).squeeze(1)
    if len(w) == 0:  # it took windows whose patterns it already held
        return F
    Fw, C, kept = F[w], comps[w], keep[w].reshape(-1) > 0
    fits = Fw @ (torch.linalg.pinv(L @ Fw) @ C)  # (b, n_sources, r), L fits ≈ C
    b, n_sources, r = fits.shape
    x = fits.transpose(1, 2).reshape(b * r, n_sources)[kept]
    y = C.transpose(1, 2).reshape(b * r, -1)[kept]
    for _ in range(network.config.residual_passes):
        x = network.residual_pass(x, y, L, K)
    out = torch.zeros(b * r, n_sources, dtype=F.dtype, device=F.device)
    out[kept] = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    F = F.clone()
    F[w] = out.reshape(b, r, n_sources).transpose(1, 2)
    return F


def start_loss(x, x_hat, background_weight=0.5):
    """Training loss of the start: ``1 − cos`` plus the L1 share off the support.

    The cosine rewards the right pattern; the share of ``‖x̂‖₁`` on sources
    where ``x = 0`` penalises a diffuse background, which the cosine barely
    sees (small values, little energy) and the AUC does.

    Parameters
    ----------
    x, x_hat : Tensor, shape (n, n_sources)
    background_weight : float

    Returns
    -------
    loss : Tensor, shape ()
    """
    tiny = torch.finfo(x.dtype).tiny
    cos = (x * x_hat).sum(1) / (x.norm(dim=1) * x_hat.norm(dim=1)).clamp_min(tiny)
    abs_hat = x_hat.abs()
    share = (abs_hat * (x == 0)).sum(1) / abs_hat.sum(1).clamp_min(tiny)
    return (1 - cos + background_weight * share).mean()


def peak_loss(x_hat, seeds, zones, active, smoothing=0.02):
    """Soft hinge that puts each patch's peak on its seed.

    For a patch with seed ``s`` and search zone ``Z`` (the localization
    metric's: the seed's neighbour rings minus the other patches' sources),
    with ``v = |x̂_s| / ‖x̂‖∞`` and ``m = max_{z ∈ Z∖s} |x̂_z| / ‖x̂‖∞`` the
    loss is ``δ · softplus((m − v) / δ)``: about ``m − v`` when the peak
    is elsewhere and about 0 when it is on the seed by more than a few
    ``δ``. The cosine alone barely sees a peak one ring off (a Gaussian
    patch is nearly flat near its seed).

    Parameters
    ----------
    x_hat : Tensor, shape (n, n_sources)
    seeds : Tensor of int64, shape (n, k)
    zones : Tensor of bool, shape (n, k, n_sources)
        Search zone of each seed, the seed excluded.
    active : Tensor of bool, shape (n, k)
        Which of the ``k`` patches exist.
    smoothing : float
        ``δ``, in units of ``‖x̂‖∞``.

    Returns
    -------
    loss : Tensor, shape ()
        Mean over the active patches.
    """
    mag = x_hat.abs()
    mag = mag / mag.amax(1, keepdim=True).clamp_min(torch.finfo(x_hat.dtype).tiny)
    at_seed = mag.gather(1, seeds)
    elsewhere = torch.where(zones, mag[:, None], 0).amax(2)
    hinge = smoothing * nn.functional.softplus((elsewhere - at_seed) / smoothing)
    return hinge[active].mean() if bool(active.any()) else hinge.sum() * 0
