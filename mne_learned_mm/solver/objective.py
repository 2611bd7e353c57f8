"""Cosine-similarity objectives of the learned MM solver.

All functions are batched over samples: ``Y`` has shape
``(n_batch, n_sensors, n_times)``, ``X`` has shape
``(n_batch, n_sources, n_times)`` and the lead field ``L`` of shape
``(n_sensors, n_sources)`` is shared by the batch. Cosine similarities are
taken between the flattened matrices of each sample.
"""

import torch

DEFAULT_EPS = 1e-12


def _flat(a):
    return a.reshape(a.shape[0], -1)


def batch_dot(a, b):
    """Per-sample inner product ``<a, b>`` of flattened arrays, shape (n_batch,)."""
    return torch.linalg.vecdot(_flat(a), _flat(b))


def safe_norm(a, eps=DEFAULT_EPS):
    """Per-sample Frobenius norm ``sqrt(||a||² + eps²)``, smooth at zero.

    Parameters
    ----------
    a : Tensor, shape (n_batch, ...)
        Batched arrays.
    eps : float
        Regularisation; the norm is never smaller than ``eps``.

    Returns
    -------
    norm : Tensor, shape (n_batch,)
    """
    return torch.sqrt(torch.linalg.vector_norm(_flat(a), dim=-1) ** 2 + eps**2)


def cosine_similarity(a, b, eps=DEFAULT_EPS):
    """Cosine similarity of the flattened matrices of each sample.

    ``cos(a, b) = <a, b> / (sqrt(||a||² + eps²) sqrt(||b||² + eps²))``; the
    ``eps`` makes it (and its derivatives) finite at zero norm, and differs
    from the exact cosine by a relative ``O(eps² / ||a||²)``.

    Parameters
    ----------
    a, b : Tensor, shape (n_batch, ...)
        Batched arrays of equal shape.
    eps : float
        Smoothing of the norms.

    Returns
    -------
    cos : Tensor, shape (n_batch,)
    """
    return batch_dot(a, b) / (safe_norm(a, eps) * safe_norm(b, eps))


def forward_project(L, X):
    """Sensor data ``L X`` of each sample.

    Parameters
    ----------
    L : Tensor, shape (n_sensors, n_sources)
    X : Tensor, shape (n_batch, n_sources, n_times)

    Returns
    -------
    LX : Tensor, shape (n_batch, n_sensors, n_times)
    """
    return torch.matmul(L, X)


def data_fidelity(X, Y, L, eps=DEFAULT_EPS):
    """Data term ``1 − cos(Y, L X)``, shape (n_batch,)."""
    return 1.0 - cosine_similarity(Y, forward_project(L, X), eps)


def prior_penalty(X, prior, eps=DEFAULT_EPS):
    """Prior term ``1 − cos(X, Φ(X))``, shape (n_batch,)."""
    return 1.0 - cosine_similarity(X, prior(X), eps)


def lower_cost_terms(X, Y, L, prior, lam=1.0, eps=DEFAULT_EPS):
    """Lower-level cost and the per-sample quantities the bounds reuse.

    Parameters
    ----------
    X, Y, L, prior, lam, eps
        See :func:`lower_cost`.

    Returns
    -------
    u : Tensor, shape (n_batch,)
        Lower-level cost.
    stats : dict of Tensor, shape (n_batch,)
        ``LX_norm`` (``||LX||``), ``x_norm`` (``||X||``),
        ``phi_norm`` (``||Φ(X)||``, NaN if ``lam == 0``), ``cos_data``
        (``cos(Y, LX)``) and ``cos_prior`` (``cos(X, Φ(X))``, NaN if
        ``lam == 0``).
    """
    LX = forward_project(L, X)
    cos_data = cosine_similarity(Y, LX, eps)
    u = 1.0 - cos_data
    stats = dict(LX_norm=safe_norm(LX, eps), x_norm=safe_norm(X, eps), cos_data=cos_data)
    if lam:
        phi = prior(X)
        cos_prior = cosine_similarity(X, phi, eps)
        u = u + lam * (1.0 - cos_prior)
        stats.update(phi_norm=safe_norm(phi, eps), cos_prior=cos_prior)
    else:
        nan = torch.full_like(u, float("nan")).detach()
        stats.update(phi_norm=nan, cos_prior=nan)
    return u, stats


def lower_cost(X, Y, L, prior, lam=1.0, eps=DEFAULT_EPS):
    """Lower-level cost ``u(X) = (1 − cos(Y, L X)) + λ (1 − cos(X, Φ(X)))``.

    Parameters
    ----------
    X : Tensor, shape (n_batch, n_sources, n_times)
        Source estimates.
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Sensor data.
    L : Tensor, shape (n_sensors, n_sources)
        Lead field.
    prior : callable
        Autoencoder Φ mapping ``X`` to an array of the same shape.
    lam : float
        Weight λ of the prior term.
    eps : float
        Smoothing of the cosine norms.

    Returns
    -------
    u : Tensor, shape (n_batch,)
    """
    return lower_cost_terms(X, Y, L, prior, lam, eps)[0]


def cost_and_grad(
    X, Y, L, prior, lam=1.0, eps=DEFAULT_EPS, create_graph=False, return_stats=False
):
    """Lower-level cost and its gradient with respect to ``X`` (autograd).

    Samples are independent, so the gradient of ``u.sum()`` is the stack of
    the per-sample gradients.

    Parameters
    ----------
    X : Tensor, shape (n_batch, n_sources, n_times)
        Point of evaluation. With ``create_graph=False`` it is detached first,
        so the result carries no graph (cheap inference path, also under
        ``torch.no_grad``). With ``create_graph=True`` the graph through ``X``
        and the prior's parameters is kept (training, double backward).
    Y, L, prior, lam, eps
        See :func:`lower_cost`.
    create_graph : bool
        Keep the graph of the gradient.
    return_stats : bool
        Also return the ``stats`` of :func:`lower_cost_terms` (detached
        unless ``create_graph``).

    Returns
    -------
    u : Tensor, shape (n_batch,)
    grad : Tensor, shape (n_batch, n_sources, n_times)
    stats : dict
        Only if ``return_stats``.
    """
    with torch.enable_grad():
        if not (create_graph and X.requires_grad):
            X = X.detach().requires_grad_(True)
        u, stats = lower_cost_terms(X, Y, L, prior, lam, eps)
        (grad,) = torch.autograd.grad(u.sum(), X, create_graph=create_graph)
    if not create_graph:
        u = u.detach()
        stats = {k: v.detach() for k, v in stats.items()}
    return (u, grad, stats) if return_stats else (u, grad)


def upper_loss(X_true, X_hat, prior, eps=DEFAULT_EPS):
    """Upper-level loss ``ℓ = (1 − cos(X, X̂)) + (1 − cos(X, Φ(X)))``.

    Parameters
    ----------
    X_true : Tensor, shape (n_batch, n_sources, n_times)
        Ground-truth sources.
    X_hat : Tensor, shape (n_batch, n_sources, n_times)
        Solver output.
    prior : callable
        Autoencoder Φ.
    eps : float
        Smoothing of the cosine norms.

    Returns
    -------
    loss : Tensor, shape ()
        Mean over the batch.
    """
    fit = 1.0 - cosine_similarity(X_true, X_hat, eps)
    return (fit + prior_penalty(X_true, prior, eps)).mean()
