"""Singular-value shrinkage of the data before the solve.

EEG data ``Y`` (sensors × times) from a few sources is a low-rank matrix plus
noise. With white noise of level ``σ`` the singular values of the noise
matrix fill the Marchenko-Pastur bulk, whose edge is ``σ (√n + √t)``;
components above it carry the signal, and the Frobenius-optimal way to keep
them is to shrink each singular value by the amount of noise it holds
(Gavish & Donoho, 2017, "Optimal shrinkage of singular values", IEEE Trans.
Inf. Theory 63(4)). The noise level is estimated from the median singular
value (Gavish & Donoho, 2014), so no noise covariance is needed and the
result does not depend on the units of ``Y``.

With noise coloured in time (filtered data) the noise occupies fewer
dimensions, the median falls and fewer components are shrunk: the estimate
errs towards keeping the data as they are.
"""

from functools import lru_cache

import numpy as np
import torch
from scipy import integrate, optimize

#: below this many singular values the median is no noise estimate: no shrinkage
MIN_DIMS = 10


@lru_cache(maxsize=64)
def marchenko_pastur_median(beta):
    """Median of the Marchenko-Pastur law with aspect ratio ``β``.

    Parameters
    ----------
    beta : float
        ``min(n, t) / max(n, t)``, in (0, 1].

    Returns
    -------
    median : float
        The median ``μ_β`` of the squared singular values of an ``n × t``
        matrix of unit-variance white noise, divided by ``max(n, t)``.
    """
    lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2

    def density(x):
        return np.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * np.pi * beta * x)

    def cdf_minus_half(m):
        return integrate.quad(density, lo, m)[0] - 0.5

    return float(optimize.brentq(cdf_minus_half, lo, hi, xtol=1e-10))


def noise_level(S, n_rows, n_cols):
    """Noise standard deviation ``σ`` from the median singular value.

    Parameters
    ----------
    S : Tensor, shape (..., min(n_rows, n_cols))
        Singular values of ``n_rows × n_cols`` matrices.
    n_rows, n_cols : int

    Returns
    -------
    sigma : Tensor, shape (...)
        ``median(S) / sqrt(max(n_rows, n_cols) μ_β)``, exact for pure white
        noise in the limit of large matrices.
    """
    m, beta = max(n_rows, n_cols), min(n_rows, n_cols) / max(n_rows, n_cols)
    return S.median(dim=-1).values / np.sqrt(m * marchenko_pastur_median(beta))


def frobenius_shrinker(y, beta):
    """Optimal shrinker of singular values for the Frobenius loss.

    Parameters
    ----------
    y : Tensor
        Singular values in noise units, ``s / (σ √max(n, t))``.
    beta : float
        Aspect ratio ``min(n, t) / max(n, t)``.

    Returns
    -------
    eta : Tensor, same shape as ``y``
        ``√((y² − β − 1)² − 4β) / y`` above the bulk edge ``1 + √β``, 0 below.
    """
    above = y > 1 + np.sqrt(beta)
    safe = torch.where(above, y, torch.ones_like(y))
    eta = ((safe ** 2 - beta - 1) ** 2 - 4 * beta).clamp_min(0).sqrt() / safe
    return torch.where(above, eta, torch.zeros_like(y))


def shrink_singular_values(Y, n_dims=None):
    """Denoise each sample by optimal shrinkage of its singular values.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Data.
    n_dims : int | None
        Dimension of the sensor space the data and noise live in
        (``n_sensors − 1`` after an average reference); ``None``:
        ``n_sensors``.

    Returns
    -------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Denoised data. A sample with no component above the noise bulk, or
        data with fewer than :data:`MIN_DIMS` singular values, is returned
        unchanged.
    rank : Tensor of int, shape (n_batch,)
        Number of components kept per sample (0 where unchanged).
    """
    n_dims = Y.shape[-2] if n_dims is None else int(n_dims)
    k = min(n_dims, Y.shape[-1])
    if k < MIN_DIMS:
        return Y, torch.zeros(len(Y), dtype=torch.long, device=Y.device)
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    U, S, Vh = U[..., :k], S[..., :k], Vh[..., :k, :]
    sigma = noise_level(S, n_dims, Y.shape[-1]).clamp_min(torch.finfo(Y.dtype).tiny)
    scale = sigma[:, None] * np.sqrt(max(n_dims, Y.shape[-1]))
    S_new = frobenius_shrinker(S / scale, min(n_dims, Y.shape[-1]) / max(n_dims, Y.shape[-1]))
    rank = (S_new > 0).sum(-1)
    Y_new = (U * (S_new * scale)[:, None, :]) @ Vh
    return torch.where((rank > 0)[:, None, None], Y_new, Y), rank
