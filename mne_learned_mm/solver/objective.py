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


def upper_loss(X_true, X_hat, prior, eps=DEFAULT_EPS, time_weight=0.0, zones=None,
               patch_weight=0.0):
    """Upper-level loss ``ℓ = (1 − cos(X, X̂)) + (1 − cos(X, Φ(X)))``.

    With ``time_weight = w > 0`` the loss gains ``w`` times
    :func:`time_course_mismatch` of ``X̂`` (a term of ours, not the paper's).

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
    time_weight : float
        Weight of the per-source temporal term (0: the paper's loss).
    zones : Tensor, shape (n_batch, n_patches, n_sources) | None
        Neighbourhood of each true patch (see :func:`patch_mismatch`).
    patch_weight : float
        Weight of :func:`patch_mismatch` (0: the paper's loss; needs ``zones``).

    Returns
    -------
    loss : Tensor, shape ()
        Mean over the batch.
    """
    fit = 1.0 - cosine_similarity(X_true, X_hat, eps)
    if time_weight:
        fit = fit + time_weight * time_course_mismatch(X_true, X_hat, eps)
    if patch_weight:
        fit = fit + patch_weight * patch_mismatch(X_true, X_hat, zones, eps)
    return (fit + prior_penalty(X_true, prior, eps)).mean()


def time_course_mismatch(X_true, X_hat, eps=DEFAULT_EPS):
    """Energy-weighted mean of ``1 − cos_t(X[s], X̂[s])`` over the sources.

    ``cos_t`` is the cosine between one source's time courses, so each
    source's temporal shape counts on its own, whatever its amplitude
    relative to the others. The weight of source ``s`` is the mean of its
    shares of the true and of the estimated energy,
    ``(‖X[s]‖² / ‖X‖² + ‖X̂[s]‖² / ‖X̂‖²) / 2``: a source that is silent in
    the truth but not in the estimate costs half its share of the estimated
    energy (its ``cos_t`` is 0), so spreading energy is not free.

    Parameters
    ----------
    X_true : Tensor, shape (n_batch, n_sources, n_times)
        Ground-truth sources.
    X_hat : Tensor, shape (n_batch, n_sources, n_times)
        Estimate.
    eps : float
        Smoothing of the norms.

    Returns
    -------
    mismatch : Tensor, shape (n_batch,)
        Between 0 (the estimate is zero where the truth is and has the right
        time courses up to positive per-source factors) and 2.
    """
    e_true, e_hat, inner = _per_source_products(X_true, X_hat)
    cos_t = _cosine_from_products(inner, e_true, e_hat, eps)
    weights = 0.5 * (e_true / (e_true.sum(-1, keepdim=True) + eps**2)
                     + e_hat / (e_hat.sum(-1, keepdim=True) + eps**2))
    return (weights * (1.0 - cos_t)).sum(-1)


def patch_mismatch(X_true, X_hat, zones, eps=DEFAULT_EPS):
    """Mean over the true patches of ``1 − cos`` restricted to each patch's zone.

    The cosine of whole matrices weighs a patch by its energy, so a small or
    weak patch next to a strong one hardly counts, while the localisation
    metrics score every patch in its own neighbourhood. Here each patch counts
    the same: ``1 − cos(X[z_k], X̂[z_k])`` over the sources ``z_k`` of its zone
    (all times), averaged over the patches of a sample.

    Parameters
    ----------
    X_true : Tensor, shape (n_batch, n_sources, n_times)
        Ground-truth sources.
    X_hat : Tensor, shape (n_batch, n_sources, n_times)
        Estimate.
    zones : Tensor of bool, shape (n_batch, n_patches, n_sources)
        ``zones[b, k]`` marks the zone of patch ``k`` of sample ``b`` (its
        sources and their surroundings); all-False rows are padding.
    eps : float
        Smoothing of the norms.

    Returns
    -------
    mismatch : Tensor, shape (n_batch,)
        Between 0 and 2; 0 for a sample without patches.
    """
    mask = zones.to(X_true.dtype)
    e_true, e_hat, inner = (mask @ p.unsqueeze(-1) for p in _per_source_products(X_true, X_hat))
    cos = _cosine_from_products(inner, e_true, e_hat, eps).squeeze(-1)
    valid = zones.any(-1).to(X_true.dtype)
    return ((1.0 - cos) * valid).sum(-1) / valid.sum(-1).clamp(min=1.0)


def _per_source_products(X_true, X_hat):
    """Per source, over time: ``‖X[s]‖²``, ``‖X̂[s]‖²``, ``<X[s], X̂[s]>`` (n_batch, n_sources)."""
    return (X_true**2).sum(-1), (X_hat**2).sum(-1), (X_true * X_hat).sum(-1)


def _cosine_from_products(inner, e_true, e_hat, eps):
    """``<a, b> / (sqrt(‖a‖² + eps²) sqrt(‖b‖² + eps²))`` from the products."""
    return inner / (torch.sqrt(e_true + eps**2) * torch.sqrt(e_hat + eps**2))
