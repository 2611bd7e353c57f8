"""Learned diagonal curvature majorant (paper Eq. 10-11).

Scale conventions (our choice)
------------------------------
The cost ``u`` is invariant to ``X → cX`` in its data term, its gradient
scales like ``1/c`` and its curvature like ``1/c²``. The networks therefore
see ``g`` and ``X`` divided by their per-sample RMS, and the inverse
curvature is predicted in units of

``p_ref = 1 / (||L||² / ||L X||² + λ / ||X||²)``,

the inverse of the curvature scale of the two cosine terms (cf. Prop. 1),
which scales like ``c²``. So ``p̃ = p_ref · F1 ⊙ F2`` with positive (softplus)
factors initialised near 1, and the whole update ``p̃ ⊙ g`` scales like
``X``: the network is scale-invariant.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .bounds import operator_norm_sq
from .objective import DEFAULT_EPS, safe_norm

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1


def _expand(v, like):
    return v.view(-1, *([1] * (like.dim() - 1)))


def rms_normalize(a, eps=DEFAULT_EPS):
    """Divide each sample by its root-mean-square value.

    Parameters
    ----------
    a : Tensor, shape (n_batch, n_channels, n_times)

    Returns
    -------
    a_normalized : Tensor, shape (n_batch, n_channels, n_times)
    """
    rms = safe_norm(a, eps) / math.sqrt(a[0].numel())
    return a / _expand(rms, a)


def reference_inverse_curvature(X, L, lam=1.0, L_norm_sq=None, eps=DEFAULT_EPS, stats=None):
    """Unit ``p_ref = 1 / (||L||²/||LX||² + λ/||X||²)`` of the predicted ``p̃``.

    Parameters
    ----------
    X : Tensor, shape (n_batch, n_sources, n_times)
    L : Tensor, shape (n_sensors, n_sources)
    lam : float
        Weight λ of the prior term.
    L_norm_sq : Tensor, shape () | None
        ``||L||²``; computed if None.
    eps : float
        Smoothing of the norms.
    stats : dict | None
        ``stats`` of :func:`~.objective.lower_cost_terms` at ``X`` (reuses
        ``LX_norm`` and ``x_norm``).

    Returns
    -------
    p_ref : Tensor, shape (n_batch,)
    """
    if L_norm_sq is None:
        L_norm_sq = operator_norm_sq(L)
    if stats is None:
        stats = dict(LX_norm=safe_norm(torch.matmul(L, X), eps), x_norm=safe_norm(X, eps))
    curv = L_norm_sq / stats["LX_norm"] ** 2
    if lam:
        curv = curv + lam / stats["x_norm"] ** 2
    return 1.0 / curv


def project_curvature(p_tilde, nu_lo, nu_hi):
    """Projection of Eq. 11: ``p = clip(p̃, ν_lo, ν_hi)``.

    Where ``ν_lo > ν_hi`` the upper bound wins (``p = ν_hi``), so the result
    is always ``≤ ν_hi``.

    Parameters
    ----------
    p_tilde : Tensor, shape (n_batch, n_sources, n_times)
        Predicted inverse curvature.
    nu_lo, nu_hi : float | Tensor, shape (n_batch,)
        Bounds, broadcast per sample (``nu_hi`` may be ``inf``).

    Returns
    -------
    p : Tensor, shape (n_batch, n_sources, n_times)
    """
    lo = torch.as_tensor(nu_lo, dtype=p_tilde.dtype, device=p_tilde.device)
    hi = torch.as_tensor(nu_hi, dtype=p_tilde.dtype, device=p_tilde.device)
    if lo.dim() == 1:
        lo = _expand(lo, p_tilde)
    if hi.dim() == 1:
        hi = _expand(hi, p_tilde)
    lo = torch.minimum(lo, hi)
    return torch.minimum(torch.maximum(p_tilde, lo), hi)


class ConvLSTMCell(nn.Module):
    """LSTM cell whose gates are 'same' Conv1d over time.

    Parameters
    ----------
    in_channels : int
        Channels of the input sequence.
    hidden_channels : int
        Channels of the hidden and cell states.
    kernel_size : int
        Odd temporal kernel size of the gate convolution.
    """

    def __init__(self, in_channels, hidden_channels, kernel_size=3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv1d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
            padding=kernel_size // 2,
        )

    def init_state(self, inp):
        """Zero state ``(h, c)`` for an input of shape (n_batch, in_channels, n_times)."""
        shape = (inp.shape[0], self.hidden_channels, inp.shape[-1])
        zeros = inp.new_zeros(shape)
        return zeros, zeros

    def forward(self, inp, state=None):
        """One step.

        Parameters
        ----------
        inp : Tensor, shape (n_batch, in_channels, n_times)
        state : tuple of Tensor, shape (n_batch, hidden_channels, n_times) | None
            ``(h, c)``; zeros if None.

        Returns
        -------
        h : Tensor, shape (n_batch, hidden_channels, n_times)
        state : tuple of Tensor
            New ``(h, c)``.
        """
        h, c = self.init_state(inp) if state is None else state
        i, f, o, cand = self.gates(torch.cat([inp, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class SpatialBasis(nn.Module):
    """Linear map of the source channels ``s → r`` (1×1 convolution).

    Parameters
    ----------
    n_sources : int
        Input channels s.
    rank : int | None
        Output channels r; None means identity (no reduction).
    basis : Tensor, shape (n_sources, rank) | None
        Fixed basis (e.g. right singular vectors of L); learned if None.
    """

    def __init__(self, n_sources, rank=None, basis=None):
        super().__init__()
        self.n_sources = n_sources
        if basis is not None:
            basis = torch.as_tensor(basis)
            if basis.shape[0] != n_sources:
                raise ValueError(f"basis must have {n_sources} rows, got {tuple(basis.shape)}")
            self.register_buffer("basis", basis.T.contiguous().unsqueeze(-1).clone())
            self.out_channels = basis.shape[1]
            self.proj = None
        elif rank is None:
            self.basis = None
            self.proj = None
            self.out_channels = n_sources
        else:
            self.basis = None
            self.proj = nn.Conv1d(n_sources, rank, 1, bias=False)
            self.out_channels = rank

    def forward(self, a):
        """Project ``a`` of shape (n_batch, n_sources, n_times) to (n_batch, r, n_times)."""
        if self.proj is not None:
            return self.proj(a)
        if self.basis is not None:
            return F.conv1d(a, self.basis.to(a))
        return a


@dataclass
class CurvatureConfig:
    """Architecture of the curvature net (:class:`CurvatureNet`, kernel 3).

    Attributes
    ----------
    hidden : int
        Hidden channels of each ConvLSTM cell.
    rank : int | None
        Size r of the spatial basis in front of the cells (None: the cells
        see all s source channels).
    even : bool
        Make the prediction even in ``(x, g)``; with an odd Φ
        (:class:`~.prior.PriorConfig`) the MM solve is sign-equivariant. The
        unrolled baseline makes its gradient modulator odd instead.
    """

    hidden: int = 32
    rank: int = 64
    even: bool = False


@dataclass
class CurvatureState:
    """Recurrent state of the curvature net across MM iterations of one solve.

    Attributes
    ----------
    f1, f2 : tuple of Tensor | None
        ``(h, c)`` of the two ConvLSTM cells, shape
        (n_batch, hidden, n_times) each.
    """

    f1: tuple = None
    f2: tuple = None


class CurvatureNet(nn.Module):
    """Curvature majorant ``p̃ = p_ref · F1(g) ⊙ F2(x, F1(g))`` (Eq. 10).

    F1 is a ConvLSTM cell on the normalised gradient, F2 a ConvLSTM cell on
    the normalised state and F1's hidden output. Each has a 1×1 head to the
    s source channels followed by a softplus, so both factors are positive
    (initialised to 1, i.e. ``p̃ ≈ p_ref`` at start). With ``rank`` set, the
    inputs are first mapped to r channels by a learned (or fixed) spatial
    basis, which removes the ``O(s)`` cost of the gate convolutions.

    Parameters
    ----------
    n_sources : int
        Number of sources s.
    hidden : int
        Hidden channels of each ConvLSTM cell.
    kernel_size : int
        Odd temporal kernel of the gate convolutions.
    rank : int | None
        Size r of the spatial basis in front of the cells; None for no
        reduction (the cells see the s source channels).
    basis : Tensor, shape (n_sources, rank) | None
        Fixed basis (shared by g and x); learned 1×1 convolutions if None.
    even : bool
        Average the prediction over ``(x, g)`` and ``(−x, −g)`` (each with
        its own recurrent state), so that ``p̃`` is even. With an odd prior Φ
        the cost ``u`` is even and its gradient odd, and the whole MM solve
        is then sign-equivariant: data ``−Y`` give exactly ``−X̂``.
    """

    def __init__(self, n_sources, hidden=32, kernel_size=3, rank=64, basis=None, even=False):
        super().__init__()
        self.even = bool(even)
        self.enc_g = SpatialBasis(n_sources, rank, basis)
        self.enc_x = SpatialBasis(n_sources, rank, basis)
        r = self.enc_g.out_channels
        self.f1 = ConvLSTMCell(r, hidden, kernel_size)
        self.f2 = ConvLSTMCell(r + hidden, hidden, kernel_size)
        self.head1 = nn.Conv1d(hidden, n_sources, 1)
        self.head2 = nn.Conv1d(hidden, n_sources, 1)
        for head in (self.head1, self.head2):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.constant_(head.bias, _SOFTPLUS_ONE)

    def forward(self, X, grad, p_ref, state=None):
        """Predict the inverse curvature.

        Parameters
        ----------
        X : Tensor, shape (n_batch, n_sources, n_times)
            Current iterate.
        grad : Tensor, shape (n_batch, n_sources, n_times)
            Gradient of ``u`` at ``X``.
        p_ref : Tensor, shape (n_batch,)
            Unit of the output (see the module docstring).
        state : CurvatureState | None
            Recurrent state; fresh if None.

        Returns
        -------
        p_tilde : Tensor, shape (n_batch, n_sources, n_times)
            Positive inverse curvature.
        state : CurvatureState
        """
        if self.even:
            n = len(X)
            p_both, state = self._predict(torch.cat([X, -X]), torch.cat([grad, -grad]),
                                          torch.cat([p_ref, p_ref]), state)
            return 0.5 * (p_both[:n] + p_both[n:]), state
        return self._predict(X, grad, p_ref, state)

    def _predict(self, X, grad, p_ref, state):
        state = CurvatureState() if state is None else state
        h1, s1 = self.f1(self.enc_g(rms_normalize(grad)), state.f1)
        h2, s2 = self.f2(torch.cat([self.enc_x(rms_normalize(X)), h1], dim=1), state.f2)
        p_tilde = F.softplus(self.head1(h1)) * F.softplus(self.head2(h2))
        return _expand(p_ref, p_tilde) * p_tilde, CurvatureState(s1, s2)
