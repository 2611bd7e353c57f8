"""Autoencoder prior Φ of the lower-level cost (paper App. B)."""

import torch
from torch import nn
from torch.nn import functional as F


class SoftReLU(nn.Module):
    """Soft ReLU ``σ(z) = (z + sqrt(z² + ε²)) / 2``.

    ``σ'(z) ∈ (0, 1)`` and ``0 < σ''(z) ≤ 1 / (2ε)`` for all ``z``.

    Parameters
    ----------
    eps : float
        Smoothing ε > 0.
    """

    def __init__(self, eps=0.01):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = float(eps)

    def forward(self, z):
        return 0.5 * (z + torch.sqrt(z * z + self.eps**2))

    def extra_repr(self):
        return f"eps={self.eps}"


def _check_kernel_size(kernel_size):
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")


def conv_operator_norm(weight, n_times, n_iter=100, tol=1e-7, v0=None):
    """Operator 2-norm of a stride-1 'same' Conv1d as a linear map on sequences.

    The layer maps ``R^{c_in × T} → R^{c_out × T}`` with zero padding
    ``k // 2``; its norm is found by power iteration on ``WᵀW`` using
    ``conv1d`` and its adjoint ``conv_transpose1d`` on a length-``T`` input.
    The bias does not enter. Power iteration approaches the norm from below;
    it stops when the relative change falls below ``tol``.

    Parameters
    ----------
    weight : Tensor, shape (c_out, c_in, k)
        Convolution kernel, ``k`` odd.
    n_times : int
        Sequence length ``T``.
    n_iter : int
        Maximum number of iterations.
    tol : float
        Relative tolerance on the norm between iterations.
    v0 : Tensor, shape (1, c_in, n_times) | None
        Starting vector (warm start); random if None.

    Returns
    -------
    norm : float
        Estimate of ``||W||₂`` on length-``T`` sequences.
    v : Tensor, shape (1, c_in, n_times)
        Top right singular vector estimate (for warm starts).
    """
    weight = weight.detach()
    pad = weight.shape[-1] // 2
    if v0 is None or v0.shape != (1, weight.shape[1], n_times):
        gen = torch.Generator().manual_seed(0)
        v0 = torch.randn(1, weight.shape[1], n_times, generator=gen, dtype=torch.float64)
    v = v0.to(weight)
    v = v / v.norm()
    norm = 0.0
    with torch.no_grad():
        for _ in range(n_iter):
            w = F.conv1d(v, weight, padding=pad)
            new = w.norm().item()
            v = F.conv_transpose1d(w, weight, padding=pad)
            v_norm = v.norm()
            if v_norm == 0:
                return 0.0, v0
            v = v / v_norm
            if abs(new - norm) <= tol * new:
                norm = new
                break
            norm = new
    return norm, v


class ConvAutoencoder(nn.Module):
    """Autoencoder Φ = Conv1d → SoftReLU → Conv1d → SoftReLU → Conv1d.

    Convolutions run over time with 'same' zero padding and the sources as
    channels, so Φ maps ``(n_batch, n_sources, n_times)`` to the same shape
    for any ``n_times``.

    Parameters
    ----------
    n_sources : int
        Number of sources s (input and output channels).
    hidden : int
        Width of the two hidden layers.
    kernel_size : int
        Odd temporal kernel size of the three layers.
    eps : float
        Smoothing ε of the SoftReLU.
    """

    def __init__(self, n_sources, hidden=32, kernel_size=3, eps=0.01):
        super().__init__()
        _check_kernel_size(kernel_size)
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(n_sources, hidden, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size, padding=pad)
        self.conv3 = nn.Conv1d(hidden, n_sources, kernel_size, padding=pad)
        self.act = SoftReLU(eps)
        self._norm_cache = {}

    @property
    def eps(self):
        """Smoothing ε of the SoftReLU."""
        return self.act.eps

    @property
    def convs(self):
        """The three convolution layers, input to output."""
        return (self.conv1, self.conv2, self.conv3)

    def forward(self, X):
        """Apply Φ.

        Parameters
        ----------
        X : Tensor, shape (n_batch, n_sources, n_times)

        Returns
        -------
        Phi : Tensor, shape (n_batch, n_sources, n_times)
        """
        z = self.act(self.conv1(X))
        z = self.act(self.conv2(z))
        return self.conv3(z)

    def layer_norms(self, n_times, differentiable=False):
        """Operator norms of the three convolutions on length-``n_times`` input.

        Cached per weight version and length; after a weight update the power
        iteration is warm-started from the previous singular vectors.

        Parameters
        ----------
        n_times : int
            Sequence length.
        differentiable : bool
            Return tensors ``||W_i v_i||`` with the (detached) top singular
            vectors ``v_i``, whose gradient with respect to the weights is
            the derivative of the top singular value.

        Returns
        -------
        norms : tuple of float | tuple of Tensor, length 3
            ``(||W1||, ||W2||, ||W3||)``.
        """
        norms = []
        for i, conv in enumerate(self.convs):
            w = conv.weight
            key = (w.data_ptr(), w._version, w.dtype, w.device, int(n_times))
            entry = self._norm_cache.get(i)
            if entry is None or entry[0] != key:
                v0 = entry[2] if entry is not None else None
                norm, v = conv_operator_norm(w, int(n_times), v0=v0)
                entry = self._norm_cache[i] = (key, norm, v)
            if differentiable:
                norms.append(F.conv1d(entry[2], w, padding=w.shape[-1] // 2).norm())
            else:
                norms.append(entry[1])
        return tuple(norms)

    def lipschitz_bound(self, n_times, differentiable=False):
        """Bound ρ ≥ ||J_Φ(x)|| for all x: product of the layer norms.

        Parameters
        ----------
        n_times : int
            Sequence length.
        differentiable : bool
            See :meth:`layer_norms`.

        Returns
        -------
        rho : float | Tensor, shape ()
        """
        n1, n2, n3 = self.layer_norms(n_times, differentiable)
        return n1 * n2 * n3

    def second_derivative_bound(self, n_times, differentiable=False):
        """Bound α̃ ≥ ||D²Φ(x)[h, h]|| for all x and unit h.

        With ``ż = W1 h``, ``ä1 = σ''(z1) ⊙ ż²`` and
        ``ä2 = σ''(z2) ⊙ (W2 ȧ1)² + σ'(z2) ⊙ W2 ä1``, using ``|σ'| ≤ 1``,
        ``|σ''| ≤ 1/(2ε)`` and ``||v ⊙ v||₂ ≤ ||v||₂²``:
        ``α̃ = ||W3|| ||W1||² ||W2|| (||W2|| + 1) / (2ε)``.

        Parameters
        ----------
        n_times : int
            Sequence length.
        differentiable : bool
            See :meth:`layer_norms`.

        Returns
        -------
        alpha : float | Tensor, shape ()
        """
        n1, n2, n3 = self.layer_norms(n_times, differentiable)
        return n3 * n1**2 * n2 * (n2 + 1.0) / (2.0 * self.eps)
