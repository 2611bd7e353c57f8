"""Autoencoder prior Φ of the lower-level cost (paper App. B)."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._docs import fill_doc


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
    """Operator 2-norm of a stride-1 'same' Conv1d on length-``T`` sequences.

    Power iteration on ``WᵀW`` with ``conv1d`` and its adjoint
    ``conv_transpose1d`` (zero padding ``k // 2``, ``k`` odd). It approaches
    the norm from below and can converge slowly when the top singular values
    are close; :func:`conv_norm_bound` gives a certified upper bound for all
    lengths and is what the analytic bounds use. The bias does not enter.

    Parameters
    ----------
    weight : Tensor, shape (c_out, c_in, k)
        Convolution kernel.
    n_times : int
        Sequence length ``T``.
    n_iter : int
        Maximum number of iterations.
    tol : float
        Stop when the relative change of the estimate is below ``tol``.
    v0 : Tensor, shape (1, c_in, n_times) | None
        Starting vector (warm start); random if None.

    Returns
    -------
    norm : float
        Estimate (from below) of ``||W||₂`` on length-``T`` sequences.
    v : Tensor, shape (1, c_in, n_times)
        Top right singular vector estimate.
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
            converged = abs(new - norm) <= tol * new
            norm = new
            if converged:
                break
    return norm, v


def _symbol_gram(taps, omega):
    """``Â(ω) Â(ω)^H`` for ``Â(ω) = Σ_a A_a e^{-iaω}``; taps (k, d, e), omega (G,)."""
    k = taps.shape[0]
    lags = torch.arange(-(k - 1), k, device=taps.device)
    gram = 0
    for m in lags.tolist():
        a = torch.arange(max(0, m), min(k, k + m), device=taps.device)
        c_m = torch.einsum("aij,akj->ik", taps[a], taps[a - m])
        phase = torch.exp(-1j * m * omega.to(torch.complex128 if c_m.dtype == torch.float64
                                                else torch.complex64))
        gram = gram + phase[:, None, None] * c_m
    return gram


def conv_norm_bound(weight, n_grid=1024, differentiable=False, omega_index=None):
    """Certified upper bound on the norm of a 'same' Conv1d, valid for every length.

    A stride-1 convolution with zero padding on length-``T`` sequences is a
    compression of the bi-infinite convolution, whose norm is
    ``sup_ω ||Ŵ(ω)||`` with ``Ŵ(ω) = Σ_a W_a e^{-iaω}`` (``W_a`` the
    ``c_out × c_in`` taps). ``ω ↦ ||Ŵ(ω)||`` is even (real taps) and
    ``D``-Lipschitz with ``D = Σ_a |a − c| ||W_a||₂`` (``c`` the centre tap),
    so on a uniform grid of ``[0, π]`` with step ``h``:
    ``||W||_T ≤ sup_ω ||Ŵ(ω)|| ≤ max_grid ||Ŵ(ω_j)|| + D h / 2``.
    ``||Ŵ(ω)||²`` is the top eigenvalue of a Gram matrix of size
    ``min(c_out, c_in)``, so this is cheap even with 1284 channels.

    Parameters
    ----------
    weight : Tensor, shape (c_out, c_in, k)
        Convolution kernel, ``k`` odd.
    n_grid : int
        Number of frequencies on ``[0, π]``.
    differentiable : bool
        Return a tensor differentiable with respect to ``weight`` (the grid
        maximiser is held fixed); otherwise a float computed in float64.
    omega_index : int | None
        Grid maximiser, if known (skips the grid search).

    Returns
    -------
    bound : float | Tensor, shape ()
    omega_index : int
        Grid maximiser.
    """
    c_out, c_in, k = weight.shape
    w = weight if differentiable else weight.detach().double()
    taps = w.permute(2, 0, 1)  # (k, c_out, c_in)
    if c_out > c_in:
        taps = taps.transpose(1, 2)  # same norms, smaller Gram
    centre = k // 2
    lipschitz = sum(
        abs(a - centre) * torch.linalg.matrix_norm(taps[a], 2) for a in range(k) if a != centre
    )
    step = math.pi / (n_grid - 1)
    omega = torch.linspace(0, math.pi, n_grid, dtype=torch.float64, device=w.device)
    if omega_index is None:
        with torch.no_grad():
            top = torch.linalg.eigvalsh(_symbol_gram(taps.detach().double(), omega))[:, -1]
            omega_index = int(top.argmax())
    j = omega_index
    top_j = torch.linalg.eigvalsh(_symbol_gram(taps, omega[j:j + 1]))[0, -1]
    bound = torch.sqrt(top_j.clamp_min(0)) + lipschitz * step / 2
    return (bound if differentiable else bound.item()), j


def _l1_norm(weight):
    """Induced ℓ1 norm bound of a convolution: max over input channels of Σ |w|."""
    return weight.detach().abs().sum(dim=(0, 2)).max().item()


def _weight_key(weight):
    """Cache key of a weight: identity, version and a checksum (``.data`` edits
    do not bump the version counter)."""
    with torch.no_grad():
        w = weight.detach()
        checksum = torch.stack([w.sum(), w.square().sum(), (w * w.flatten().cumsum(0)
                                                            .view_as(w)).sum()])
    return (w.data_ptr(), weight._version, w.dtype, w.device, tuple(checksum.tolist()))


@dataclass
class PriorConfig:
    """Architecture of the autoencoder Φ (:class:`ConvAutoencoder`, kernel 3).

    Attributes
    ----------
    hidden : int
        Width of the two hidden layers.
    eps : float
        Smoothing ε of the SoftReLU.
    odd : bool
        Make Φ odd, ``Φ(−X) = −Φ(X)``, so that the solver has no preferred
        source polarity.
    """

    hidden: int = 32
    eps: float = 0.01
    odd: bool = False


class ConvAutoencoder(nn.Module):
    """Autoencoder Φ = Conv1d → SoftReLU → Conv1d → SoftReLU → Conv1d.

    Convolutions run over time with 'same' zero padding and the sources as
    channels, so Φ maps ``(n_batch, n_sources, n_times)`` to the same shape
    for any ``n_times``.

    With ``odd=True``, Φ is the odd part of that network ``f``:
    ``Φ(X) = (f(X) − f(−X)) / 2``, so ``Φ(−X) = −Φ(X)``. The inverse problem
    is sign-symmetric (``−X`` explains ``−Y``), and a prior trained on
    sources of one polarity otherwise learns a polarity preference that
    shrinks sources of the other sign. The bounds below stay valid for the
    odd part: ``J_Φ(x) = (J_f(x) + J_f(−x)) / 2`` and
    ``D²Φ(x) = (D²f(x) − D²f(−x)) / 2`` are averages of two quantities
    with the same bounds.

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
    odd : bool
        Use the odd part of the network (see above).
    """

    def __init__(self, n_sources, hidden=32, kernel_size=3, eps=0.01, odd=False):
        super().__init__()
        self.odd = bool(odd)
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
            Source estimates.

        Returns
        -------
        Phi : Tensor, shape (n_batch, n_sources, n_times)
            ``Φ(X)``, odd in ``X`` when the prior is odd.
        """
        if not self.odd:
            return self._network(X)
        both = self._network(torch.cat([X, -X]))
        return 0.5 * (both[:len(X)] - both[len(X):])

    def _network(self, X):
        return self.conv3(self.act(self.conv2(self.act(self.conv1(X)))))

    def extra_repr(self):
        return "odd=True" if self.odd else ""

    def second_layer_l1_norm(self):
        """Induced ℓ1 norm bound ``||W2||₁`` of the second layer.

        Returns
        -------
        norm : float
            The largest sum of absolute weights into one input channel, taps
            summed.
        """
        return _l1_norm(self.conv2.weight)

    @fill_doc
    def layer_norms(self, differentiable=False):
        """Certified bounds on the operator norms of the three convolutions.

        :func:`conv_norm_bound` for each layer: valid for every sequence
        length; cached per weight tensor, version and checksum.

        Parameters
        ----------
        %(differentiable)s

        Returns
        -------
        norms : tuple of float | tuple of Tensor, length 3
            ``(||W1||, ||W2||, ||W3||)``.
        """
        norms = []
        for i, conv in enumerate(self.convs):
            w = conv.weight
            key = _weight_key(w)
            entry = self._norm_cache.get(i)
            if entry is None or entry[0] != key:
                entry = self._norm_cache[i] = (key, *conv_norm_bound(w))
            if differentiable:
                norms.append(conv_norm_bound(w, differentiable=True, omega_index=entry[2])[0])
            else:
                norms.append(entry[1])
        return tuple(norms)

    @fill_doc
    def lipschitz_bound(self, differentiable=False):
        """Bound ρ ≥ ||J_Φ(x)|| for all x: product of the layer norms.

        ``J_Φ = W3 diag(σ'(z2)) W2 diag(σ'(z1)) W1`` with ``0 < σ' < 1``.

        Parameters
        ----------
        %(differentiable)s

        Returns
        -------
        rho : float | Tensor, shape ()
            Lipschitz constant bound of Φ.
        """
        n1, n2, n3 = self.layer_norms(differentiable)
        return n1 * n2 * n3

    @fill_doc
    def second_derivative_bound(self, differentiable=False):
        """Bound α̃ ≥ ||D²Φ(x)[h, h]|| for all x and unit h.

        With ``ż = W1 h``, ``ä1 = σ''(z1) ⊙ ż²`` and
        ``ä2 = σ''(z2) ⊙ (W2 ȧ1)² + σ'(z2) ⊙ W2 ä1``, using ``|σ'| ≤ 1``,
        ``|σ''| ≤ 1/(2ε)`` and ``||v ⊙ v||₂ ≤ ||v||₂²``:
        ``α̃ = ||W3|| ||W1||² ||W2|| (||W2|| + 1) / (2ε)``.

        Parameters
        ----------
        %(differentiable)s

        Returns
        -------
        alpha : float | Tensor, shape ()
            Bound on the second directional derivative of Φ along unit
            directions.
        """
        n1, n2, n3 = self.layer_norms(differentiable)
        return n3 * n1**2 * n2 * (n2 + 1.0) / (2.0 * self.eps)
