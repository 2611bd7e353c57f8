"""Starting points of the MM solve.

The paper starts from ``X0 = 1e-3 N(0, 1)``. A regularised minimum-norm
(Tikhonov) start is much closer to the solution and lets 10 MM steps go
further. ``"prior"`` goes one step further: the learned autoencoder Φ,
trained as a denoiser of Tikhonov solutions, maps ``K Y`` to a warm start
``Φ(K Y)``; the MM iterations then decrease ``u`` from there.
"""

import torch

INITS = ("random", "tikhonov", "prior")


def tikhonov_operator(L, reg=1.0 / 9.0):
    """Minimum-norm operator ``K = Lᵀ (L Lᵀ + λ I)⁻¹``.

    ``λ = reg · tr(L Lᵀ) / n`` so that ``reg`` is scale free (1/9 is MNE's
    ``lambda2`` for an SNR of 3).

    Parameters
    ----------
    L : Tensor, shape (n_sensors, n_sources)
    reg : float

    Returns
    -------
    K : Tensor, shape (n_sources, n_sensors)
    """
    gram = L @ L.T
    n = gram.shape[0]
    lam = reg * torch.trace(gram) / n
    eye = torch.eye(n, dtype=L.dtype, device=L.device)
    return torch.linalg.solve(gram + lam * eye, L).T


def initial_point(Y, L, kind="tikhonov", *, K=None, reg=1.0 / 9.0, seed=0, scale=1e-3,
                  prior=None):
    """Initial source estimate ``X0``.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    L : Tensor, shape (n_sensors, n_sources)
    kind : "random" | "tikhonov"
        ``"random"``: ``scale · N(0, 1)`` from ``seed`` (the paper's start).
        ``"tikhonov"``: ``K Y`` normalised to unit norm per sample.
        ``"prior"``: ``Φ(K Y / ‖K Y‖)`` normalised to unit norm per sample.
    K : Tensor, shape (n_sources, n_sensors) | None
        Precomputed :func:`tikhonov_operator`.
    prior : callable | None
        The autoencoder Φ, needed for ``"prior"``.

    Returns
    -------
    X0 : Tensor, shape (n_batch, n_sources, n_times)
    """
    B, _, T = Y.shape
    S = L.shape[1]
    if kind == "random":
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        X0 = torch.randn(B, S, T, generator=gen, dtype=Y.dtype)
        return (scale * X0).to(Y.device)
    if kind not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {kind!r}")
    K = tikhonov_operator(L, reg) if K is None else K
    X0 = _unit(torch.einsum("sn,bnt->bst", K, Y))
    if kind == "prior":
        if prior is None:
            raise ValueError('init="prior" needs the autoencoder Φ (prior=...)')
        X0 = _unit(prior(X0))
    return X0


def _unit(X):
    norm = X.flatten(1).norm(dim=1).clamp_min(torch.finfo(X.dtype).tiny)
    return X / norm[:, None, None]


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
    Y = Y / Y.flatten(1).norm(dim=1).clamp_min(torch.finfo(Y.dtype).tiny)[:, None, None]
    return Y, L / torch.linalg.matrix_norm(L, ord=2)
