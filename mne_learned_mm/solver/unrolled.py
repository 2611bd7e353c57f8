"""4DVarNet-style unrolled baseline (Fablet et al. 2021).

Same cost, same prior Φ, same initial point, but a ConvLSTM maps the
gradient directly to the update, ``x ← x − G(∇u(x))``: no projection, no
certificate. Swappable with :class:`~.mm.LearnedMM` (same constructor style,
same ``forward`` signature and history).
"""

import math

import torch
from torch import nn

from .bounds import operator_norm_sq
from .majorant import (
    ConvLSTMCell,
    SpatialBasis,
    _expand,
    reference_inverse_curvature,
    rms_normalize,
)
from .mm import _batched_start, _build_parts, _Recorder
from .objective import cost_and_grad, safe_norm


class GradientModulator(nn.Module):
    """``G(g) = p_ref · rms(g) · head(ConvLSTM(basis(g / rms(g))))``.

    The output has the units of ``X`` (``p_ref · g``), so the update is
    scale-invariant like the MM step.

    Parameters
    ----------
    n_sources : int
        Number of sources s.
    hidden : int
        Hidden channels of the ConvLSTM cell.
    kernel_size : int
        Odd temporal kernel of the gate convolution.
    rank : int | None
        Size of the spatial basis in front of the cell (None: no reduction).
    basis : Tensor, shape (n_sources, rank) | None
        Fixed basis; learned if None.
    odd : bool
        Make ``G`` odd, ``G(−g) = −G(g)``, by averaging ``G(g)`` and
        ``−G(−g)`` (the second pass keeps its own recurrent state). With an
        odd prior Φ the gradient is odd in ``X`` and the whole unrolled solve
        is sign-equivariant, as the MM solver with an even curvature net.
    """

    def __init__(self, n_sources, hidden=32, kernel_size=3, rank=64, basis=None, odd=False):
        super().__init__()
        self.odd = bool(odd)
        self.enc = SpatialBasis(n_sources, rank, basis)
        self.cell = ConvLSTMCell(self.enc.out_channels, hidden, kernel_size)
        self.head = nn.Conv1d(hidden, n_sources, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, grad, p_ref, state=None):
        """Update direction.

        Parameters
        ----------
        grad : Tensor, shape (n_batch, n_sources, n_times)
        p_ref : Tensor, shape (n_batch,)
        state : tuple of Tensor | None
            ConvLSTM ``(h, c)``.

        Returns
        -------
        update : Tensor, shape (n_batch, n_sources, n_times)
        state : tuple of Tensor
        """
        if self.odd:
            n = len(grad)
            both, state = self._update(torch.cat([grad, -grad]), torch.cat([p_ref, p_ref]), state)
            return 0.5 * (both[:n] - both[n:]), state
        return self._update(grad, p_ref, state)

    def _update(self, grad, p_ref, state):
        h, state = self.cell(self.enc(rms_normalize(grad)), state)
        rms = safe_norm(grad) / math.sqrt(grad[0].numel())
        return _expand(p_ref * rms, grad) * self.head(h), state


class UnrolledSolver(nn.Module):
    """4DVarNet-style gradient-modulation solver (baseline).

    Parameters
    ----------
    n_sources : int
        Number of sources s.
    config : MMConfig | None
        Uses ``n_iter`` and ``lam``; the bound and certificate fields are
        ignored.
    prior : nn.Module | PriorConfig | None
        Autoencoder Φ, or its configuration (see :class:`~.mm.LearnedMM`).
    modulator : nn.Module | CurvatureConfig | None
        Gradient modulator G, or the configuration of a
        :class:`GradientModulator` (``even`` makes it odd).
    **overrides
        Flat settings (:func:`~.mm.split_solver_config`).
    """

    def __init__(self, n_sources, config=None, prior=None, modulator=None, **overrides):
        super().__init__()
        self.config, self.prior, self.modulator = _build_parts(
            n_sources, config, prior, modulator, lambda c: GradientModulator(
                n_sources, c.hidden, rank=c.rank, odd=c.even), overrides)
        self.n_sources = n_sources

    def forward(self, Y, L, X0=None, *, create_graph=False):
        """Run ``n_iter`` modulated gradient steps.

        Parameters
        ----------
        Y : Tensor, shape (n_batch, n_sensors, n_times)
        L : Tensor, shape (n_sensors, n_sources)
        X0 : Tensor, shape (n_sources, n_times) or (n_batch, n_sources, n_times) | None
        create_graph : bool
            Keep the graph of the gradients (training).

        Returns
        -------
        X_hat : Tensor, shape (n_batch, n_sources, n_times)
        history : SolverHistory
            ``cost`` per iterate; no shrinks, no rejections, ``nu_hi`` NaN.
        """
        cfg = self.config
        X = _batched_start(Y, L, X0)
        L_norm_sq = operator_norm_sq(L)
        u, g, stats = cost_and_grad(X, Y, L, self.prior, cfg.lam, create_graph=create_graph,
                                    return_stats=True)
        rec = _Recorder()
        rec.add(cost=u)
        state = None
        zeros = torch.zeros_like(u.detach())
        for _ in range(cfg.n_iter):
            p_ref = reference_inverse_curvature(X, L, cfg.lam, L_norm_sq, stats=stats)
            update, state = self.modulator(g, p_ref, state)
            X = X - update
            u, g, stats = cost_and_grad(X, Y, L, self.prior, cfg.lam,
                                        create_graph=create_graph, return_stats=True)
            rec.add(cost=u, n_shrinks=zeros, rejected=zeros, frac_hi=zeros, frac_lo=zeros,
                    nu_hi=torch.full_like(zeros, math.nan))
        return X, rec.history(u)
