"""Starting points of the MM solve.

The paper starts from ``X0 = 1e-3 N(0, 1)``. A regularised minimum-norm
(Tikhonov) start is much closer to the solution and lets 10 MM steps go
further. ``"prior"`` goes one step further: the learned autoencoder Φ,
trained as a denoiser of Tikhonov solutions, maps ``K Y`` to a warm start
``Φ(K Y)``; the MM iterations then decrease ``u`` from there.
``"amortized"`` is the start network of :mod:`~.start`.
:func:`initial_point` builds every one of them, for training and for
inference.
"""

import torch

INITS = ("random", "tikhonov", "prior", "amortized")
#: linear images that start the solve (or feed Φ): minimum norm or sLORETA
OPERATORS = ("tikhonov", "sloreta")


def tikhonov_operator(L, reg=1.0 / 9.0, operator="tikhonov"):
    """Minimum-norm operator ``K = Lᵀ (L Lᵀ + λ I)⁻¹``, or its sLORETA standardisation.

    ``λ = reg · tr(L Lᵀ) / n`` so that ``reg`` is scale free (1/9 is MNE's
    ``lambda2`` for an SNR of 3); ``n`` counts the non-zero rows of ``L``
    (zero rows are dropped channels).

    ``operator="sloreta"`` divides each row ``i`` of ``K`` by
    ``sqrt((K L)ᵢᵢ)``: with white noise of variance ``λ`` that is the standard
    deviation of ``(K Y)ᵢ`` under ``Y = L x + n``, ``x ~ N(0, I)``
    (``K (L Lᵀ + λ I) Kᵀ = K L``), i.e. sLORETA (Pascual-Marqui, 2002), which
    locates a single noise-free source exactly and removes the minimum-norm
    bias towards superficial sources.

    Parameters
    ----------
    L : Tensor, shape (n_sensors, n_sources) | (n_batch, n_sensors, n_sources)
        One leadfield, or one per sample.
    reg : float
    operator : "tikhonov" | "sloreta"
        The minimum-norm operator or its standardisation (see above).

    Returns
    -------
    K : Tensor, shape (n_sources, n_sensors) | (n_batch, n_sources, n_sensors)
    """
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
    gram = L @ L.mT
    n = (L.abs().amax(-1) > 0).sum(-1).clamp_min(1)
    lam = reg * torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1) / n
    eye = torch.eye(gram.shape[-1], dtype=L.dtype, device=L.device)
    K = torch.linalg.solve(gram + lam[..., None, None] * eye, L).mT
    if operator == "sloreta":
        resolution = (K * L.mT).sum(-1)  # diag(K L), one value per source
        K = K / resolution.clamp_min(torch.finfo(L.dtype).tiny).sqrt()[..., None]
    return K


def initial_point(Y, L, kind="tikhonov", *, K=None, reg=1.0 / 9.0, seed=0, prior=None,
                  network=None):
    """Initial source estimate ``X0``: the one start of training and inference.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    L : Tensor, shape (n_sensors, n_sources)
    kind : "random" | "tikhonov" | "prior" | "amortized"
        ``"random"``: ``1e-3 · N(0, 1)`` from ``seed`` (the paper's start).
        ``"tikhonov"``: ``K Y`` normalised to unit norm per sample.
        ``"prior"``: ``Φ(K Y / ‖K Y‖)`` normalised to unit norm per sample.
        ``"amortized"``: :func:`~.start.amortized_start` with ``network``,
        normalised to unit norm per sample.
    K : Tensor, shape (n_sources, n_sensors) | None
        Precomputed linear operator: :func:`tikhonov_operator` of ``L`` with
        ``reg`` (``"tikhonov"``, ``"prior"``), or its sLORETA form with the
        network's ``reg`` (``"amortized"``); computed if None.
    reg : float
        Regularisation of the Tikhonov operator.
    seed : int
        Seed of the random start.
    prior : callable | None
        The autoencoder Φ, needed for ``"prior"``.
    network : mne_learned_mm.solver.start.StartNetwork | None
        The start network, needed for ``"amortized"``.

    Returns
    -------
    X0 : Tensor, shape (n_batch, n_sources, n_times)
    """
    if kind not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {kind!r}")
    if kind == "random":
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        X0 = torch.randn(Y.shape[0], L.shape[1], Y.shape[-1], generator=gen, dtype=Y.dtype)
        return (1e-3 * X0).to(Y.device)
    if kind == "amortized":
        from .start import amortized_start

        if network is None:
            raise ValueError('init="amortized" needs the start network (network=...)')
        return unit_frobenius(amortized_start(Y, L, network, K=K))
    K = tikhonov_operator(L, reg) if K is None else K
    X0 = unit_frobenius(torch.einsum("sn,bnt->bst", K, Y))
    if kind == "prior":
        if prior is None:
            raise ValueError('init="prior" needs the autoencoder Φ (prior=...)')
        X0 = unit_frobenius(prior(X0))
    return X0


def normalise_problem(Y, L):
    """Scale ``Y`` to unit Frobenius norm per sample and ``L`` to unit spectral norm.

    The cosine costs are invariant to both scalings (the amplitude is restored
    afterwards by least squares), so the learned parts always see the same
    numeric range whatever the units of the data.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    L : Tensor, shape (n_sensors, n_sources)

    Returns
    -------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    L : Tensor, shape (n_sensors, n_sources)
    """
    return unit_frobenius(Y), unit_spectral(L)


def unit_frobenius(Y):
    """Each sample ``Y[b]`` of ``Y`` (n_batch, ...) scaled to unit Frobenius norm.

    A zero sample stays zero (see :func:`normalise_problem`).
    """
    norm = Y.flatten(1).norm(dim=1).clamp_min(torch.finfo(Y.dtype).tiny)
    return Y / norm.view(-1, *([1] * (Y.dim() - 1)))


def unit_spectral(L):
    """``L`` scaled to unit spectral norm (see :func:`normalise_problem`)."""
    return L / torch.linalg.matrix_norm(L, ord=2)


def fitted_scale(Y, P):
    """Least-squares ``a`` per sample with ``Y ≈ a P`` (0 where ``P = 0``).

    Parameters
    ----------
    Y, P : Tensor, shape (n_batch, ...)

    Returns
    -------
    a : Tensor, shape (n_batch,)
    """
    dims = tuple(range(1, Y.dim()))
    return (Y * P).sum(dims) / P.square().sum(dims).clamp_min(torch.finfo(P.dtype).tiny)


def same_tensor(a, b):
    """Whether two tensors are equal in shape, device, dtype and every value (the test of
    the caches kept per leadfield)."""
    return a is b or a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and bool(
        torch.equal(a, b))
