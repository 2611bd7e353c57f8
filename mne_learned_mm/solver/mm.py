"""Learned MM solver: ``x ← x − γ p ⊙ ∇u(x)`` with a descent certificate."""

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .bounds import analytic_nu_hi, hessian_power_iteration, hvp_nu_hi, operator_norm_sq
from .majorant import CurvatureNet, _expand, project_curvature, reference_inverse_curvature
from .objective import DEFAULT_EPS, batch_dot, cost_and_grad, lower_cost_terms
from .prior import ConvAutoencoder

BOUNDS = ("analytic", "hvp", "min", "none", "scaled")


@dataclass
class MMConfig:
    """Configuration of :class:`LearnedMM` (and of the unrolled baseline).

    Attributes
    ----------
    n_iter : int
        Number I of MM iterations (0: the start alone; no cost is computed).
    gamma : float
        Step factor γ, ``0 < γ < 2``.
    bound : str
        Upper bound ν_hi on the inverse curvature: ``"analytic"`` (provable
        bound valid along the step, :func:`~.bounds.analytic_nu_hi`),
        ``"hvp"`` (``1/λ̂_max`` from Alg. 1), ``"min"`` (the smaller of the
        two), ``"none"`` (only the ν_lo clip; ablation) or ``"scaled"``
        (the learned shape ``p̃`` kept, its scale set to ``1/λ̂_max`` of
        ``P̃^{1/2} ∇²u P̃^{1/2}`` by Alg. 1 on the preconditioned Hessian, so
        that ``Diag(1/p) ⪰ ∇²u`` holds to the power iteration's accuracy and
        ``p`` may exceed ``1/λ_max`` where the curvature is low; the
        certificate checks each step).
    lam : float
        Weight λ of the prior term.
    nu_lo : float
        Lower bound ν_lo of the inverse curvature, in units of the reference
        ``p_ref`` (:func:`~.majorant.reference_inverse_curvature`), so it is
        scale-invariant.
    hvp_iters : int
        Hessian-vector products K per MM iteration for the ``"hvp"`` and
        ``"min"`` bounds (warm-started from the previous iteration's vector).
    max_shrinks : int
        Halvings of p allowed per iteration when the certificate fails;
        after that the step is rejected for that sample.
    cert_rtol : float | None
        Slack of the certificate, relative to ``1 + |u(x)|``; None means
        ``16 * finfo(dtype).eps`` (rounding of ``u``).
    init : str
        ``"random"``: ``X0 = init_scale · N(0, 1)`` drawn with ``seed``, used
        when no ``X0`` is given.
    init_scale : float
        Scale of the random initial point.
    seed : int
        Seed of the random initial point (and of the HVP start vectors).
    eps : float
        Smoothing of the cosine norms.
    prior_hidden, prior_kernel, prior_eps : int, int, float
        Width, odd temporal kernel and SoftReLU ε of Φ.
    prior_odd : bool
        Make Φ odd, ``Φ(−X) = −Φ(X)`` (see
        :class:`~mne_learned_mm.solver.prior.ConvAutoencoder`), so that the
        solver has no preferred source polarity.
    prior_context : bool
        Let Φ's second layer see the window's mean activation (see
        :class:`~mne_learned_mm.solver.prior.ConvAutoencoder`).
    net_even : bool
        Make the curvature prediction even in ``(x, g)`` (see
        :class:`~mne_learned_mm.solver.majorant.CurvatureNet`); with
        ``prior_odd`` the solve is sign-equivariant.
    net_hidden, net_kernel : int, int
        Hidden channels and odd temporal kernel of the ConvLSTM cells.
    net_rank : int | None
        Size r of the spatial basis in front of the ConvLSTM cells (None:
        the cells see all s source channels).
    grad_iters : int | None
        Truncated backpropagation for training: with ``create_graph=True``
        only the last ``grad_iters`` iterations are differentiated; the
        earlier ones run without graph (None: all iterations).
    """

    n_iter: int = 10
    gamma: float = 1.0
    bound: str = "analytic"
    lam: float = 1.0
    nu_lo: float = 1e-6
    hvp_iters: int = 5
    max_shrinks: int = 8
    cert_rtol: float = None
    init: str = "random"
    init_scale: float = 1e-3
    seed: int = 0
    eps: float = DEFAULT_EPS
    prior_hidden: int = 32
    prior_kernel: int = 3
    prior_eps: float = 0.01
    prior_odd: bool = False
    prior_context: bool = False
    net_even: bool = False
    net_hidden: int = 32
    net_kernel: int = 3
    net_rank: int = 64
    grad_iters: int = None

    def __post_init__(self):
        if not 0 < self.gamma < 2:
            raise ValueError(f"gamma must be in (0, 2), got {self.gamma}")
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.init != "random":
            raise ValueError(f"init must be 'random', got {self.init!r}")
        if self.n_iter < 0 or self.max_shrinks < 0 or self.hvp_iters < 1:
            raise ValueError("n_iter and max_shrinks must be >= 0 and hvp_iters >= 1")
        if not self.nu_lo > 0:
            raise ValueError(f"nu_lo must be positive, got {self.nu_lo}")


def _make_config(config, overrides):
    config = MMConfig() if config is None else config
    return replace(config, **overrides) if overrides else config


@dataclass
class SolverHistory:
    """What happened during one batched solve.

    Attributes
    ----------
    cost : Tensor, shape (n_batch, n_iter + 1)
        ``u`` at each iterate, the initial point first.
    n_shrinks : Tensor, shape (n_batch, n_iter)
        Halvings of p needed by the certificate.
    rejected : Tensor, shape (n_batch, n_iter)
        True where no step passed the certificate (the iterate stayed).
    frac_hi, frac_lo : Tensor, shape (n_batch, n_iter)
        Fraction of the entries of p clipped at ν_hi and at ν_lo.
    nu_hi : Tensor, shape (n_batch, n_iter)
        Upper bound used (``inf`` for ``"none"``, NaN for the baseline; the
        scale ``1/λ̂`` of the learned shape for ``"scaled"``).
    """

    cost: torch.Tensor
    n_shrinks: torch.Tensor
    rejected: torch.Tensor
    frac_hi: torch.Tensor
    frac_lo: torch.Tensor
    nu_hi: torch.Tensor

    def as_numpy(self):
        """Dict of NumPy arrays, one per attribute."""
        return {k: v.detach().cpu().numpy() for k, v in asdict(self).items()}


class _Recorder:
    def __init__(self):
        self.rows = {k: [] for k in ("cost", "n_shrinks", "rejected", "frac_hi", "frac_lo",
                                     "nu_hi")}

    def add(self, **values):
        for k, v in values.items():
            self.rows[k].append(v.detach())

    def history(self, like):
        n_batch = like.shape[0]
        out = {}
        for k, rows in self.rows.items():
            out[k] = torch.stack(rows, 1) if rows else like.new_zeros((n_batch, 0))
        out["n_shrinks"] = out["n_shrinks"].long()
        out["rejected"] = out["rejected"].bool()
        return SolverHistory(**out)


def initial_point(Y, n_sources, config, X0=None):
    """Initial iterate of a solve.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Sensor data (gives batch size, dtype and device).
    n_sources : int
        Number of sources s.
    config : MMConfig
        Uses ``init_scale`` and ``seed`` when ``X0`` is None.
    X0 : Tensor, shape (n_sources, n_times) or (n_batch, n_sources, n_times) | None
        Given initial point (broadcast over the batch).

    Returns
    -------
    X0 : Tensor, shape (n_batch, n_sources, n_times)
    """
    shape = (Y.shape[0], n_sources, Y.shape[-1])
    if X0 is not None:
        return torch.as_tensor(X0, dtype=Y.dtype, device=Y.device).expand(shape).clone()
    gen = torch.Generator().manual_seed(config.seed)
    dtype = Y.dtype if Y.dtype.is_floating_point else torch.get_default_dtype()
    X0 = torch.randn(shape, generator=gen, dtype=dtype)
    return (config.init_scale * X0).to(device=Y.device)


def _scatter(dst, idx, src):
    dst = dst.clone()
    dst[idx] = src
    return dst


class LearnedMM(nn.Module):
    """Learned Majorization-Minimization solver (paper Sec. V, Alg. 2).

    Each iteration computes ``g = ∇u(x)``, predicts ``p̃`` with the
    curvature net, projects it on ``[ν_lo, ν_hi]`` (Eq. 11) and takes
    ``x⁺ = x − γ p ⊙ g``. A descent certificate then checks, per sample,

    ``u(x⁺) ≤ u(x) + <g, x⁺ − x> + <x⁺ − x, (x⁺ − x)/p>/2``

    (which implies ``u(x⁺) ≤ u(x) − γ(1 − γ/2)<g, p g>``); where it fails, p
    is halved and the step retried up to ``max_shrinks`` times, after which
    the sample keeps its iterate. The decisions are taken without gradient;
    the accepted step stays differentiable (factor ``2^-k``, or 0).

    Parameters
    ----------
    n_sources : int
        Number of sources s.
    config : MMConfig | None
        Configuration; defaults of :class:`MMConfig` if None.
    prior : nn.Module | None
        Autoencoder Φ; a :class:`~.prior.ConvAutoencoder` from the config if
        None (the analytic bound needs its ``lipschitz_bound`` and
        ``second_derivative_bound``).
    curvature : nn.Module | None
        Curvature net; a :class:`~.majorant.CurvatureNet` from the config if
        None.
    **overrides
        Fields of :class:`MMConfig` to override.
    """

    def __init__(self, n_sources, config=None, prior=None, curvature=None, **overrides):
        super().__init__()
        self.config = cfg = _make_config(config, overrides)
        self.n_sources = n_sources
        if prior is None:
            prior = ConvAutoencoder(n_sources, cfg.prior_hidden, cfg.prior_kernel, cfg.prior_eps,
                                    cfg.prior_odd, cfg.prior_context)
        if curvature is None:
            curvature = CurvatureNet(n_sources, cfg.net_hidden, cfg.net_kernel, cfg.net_rank,
                                     even=cfg.net_even)
        self.prior = prior
        self.curvature = curvature

    def _cost_and_grad(self, X, Y, L, create_graph):
        cfg = self.config
        return cost_and_grad(X, Y, L, self.prior, cfg.lam, cfg.eps, create_graph,
                             return_stats=True)

    def _upper_bound(self, X, Y, L, g, stats, L_norm_sq, nu_lo, hvp_state):
        cfg = self.config
        nu_hi = torch.full_like(nu_lo, math.inf)
        if cfg.bound in ("analytic", "min"):
            nu_hi = analytic_nu_hi(X, Y, L, self.prior, cfg.lam, grad=g, gamma=cfg.gamma,
                                   eps=cfg.eps, L_norm_sq=L_norm_sq, stats=stats)
        if cfg.bound in ("hvp", "min"):
            lam_max, hvp_state["v"], _ = hessian_power_iteration(
                X, Y, L, self.prior, cfg.lam, cfg.hvp_iters, v0=hvp_state.get("v"),
                eps=cfg.eps, generator=hvp_state["gen"])
            nu_hi = torch.minimum(nu_hi, hvp_nu_hi(lam_max, nu_lo))
        return nu_hi

    def _scaled_curvature(self, X, Y, L, p_tilde, nu_lo, hvp_state):
        """``p = p̃ / λ̂_max(P̃^{1/2} ∇²u P̃^{1/2})``; returns ``p`` and the scale ``1/λ̂``."""
        cfg = self.config
        shape = torch.maximum(p_tilde, _expand(nu_lo, p_tilde))
        lam_max, hvp_state["v"], _ = hessian_power_iteration(
            X, Y, L, self.prior, cfg.lam, cfg.hvp_iters, v0=hvp_state.get("v"),
            eps=cfg.eps, generator=hvp_state["gen"], precond=shape)
        scale = hvp_nu_hi(lam_max, torch.ones_like(lam_max))
        return shape * _expand(scale, shape), scale

    def _certify(self, X, Y, L, u, g, p, create_graph):
        """Per-sample step factors ``2^-k`` (0 if rejected) passing the certificate.

        Returns the factors, shrink counts, acceptance and (inference path
        only) the indices, cost, gradient and stats at the accepted points.
        """
        cfg = self.config
        tol_r = cfg.cert_rtol if cfg.cert_rtol is not None else 16 * torch.finfo(u.dtype).eps
        n_batch = u.shape[0]
        with torch.no_grad():
            X, u, g = X.detach(), u.detach(), g.detach()
            step = p.detach() * g
            decrease = cfg.gamma * (1.0 - 0.5 * cfg.gamma) * batch_dot(g, step)
            rhs0 = u + tol_r * (1.0 + u.abs())
            factor = torch.ones_like(u)
            shrinks = torch.zeros_like(u, dtype=torch.long)
            accepted = torch.zeros_like(u, dtype=torch.bool)
            found = None
            todo = torch.arange(n_batch, device=u.device)
            for attempt in range(cfg.max_shrinks + 1):
                if todo.numel() == n_batch:  # no indexing on the common first attempt
                    Xs, steps, Ys, fs = X, step, Y, factor
                else:
                    Xs, steps, Ys, fs = X[todo], step[todo], Y[todo], factor[todo]
                trial = torch.addcmul(Xs, _expand(fs, Xs), steps, value=-cfg.gamma)
                if create_graph:
                    u_t, stats_t = lower_cost_terms(trial, Ys, L, self.prior, cfg.lam, cfg.eps)
                else:
                    u_t, g_t, stats_t = self._cost_and_grad(trial, Ys, L, False)
                ok = u_t <= rhs0[todo] - fs * decrease[todo]
                idx = todo[ok]
                accepted[idx] = True
                if not create_graph:
                    found = _merge(found, idx, u_t[ok], g_t[ok],
                                   {k: v[ok] for k, v in stats_t.items()})
                todo = todo[~ok]
                if todo.numel() == 0 or attempt == cfg.max_shrinks:
                    break
                factor[todo] *= 0.5
                shrinks[todo] += 1
            factor = torch.where(accepted, factor, torch.zeros_like(factor))
        return factor, shrinks, accepted, found

    def forward(self, Y, L, X0=None, *, create_graph=False):
        """Solve the lower-level problem for a batch.

        Parameters
        ----------
        Y : Tensor, shape (n_batch, n_sensors, n_times)
            Sensor data (any ``n_times``).
        L : Tensor, shape (n_sensors, n_sources)
            Lead field.
        X0 : Tensor, shape (n_sources, n_times) or (n_batch, n_sources, n_times) | None
            Initial point; ``config.init`` if None.
        create_graph : bool
            Training path: keep the graph of every gradient (double backward)
            so ``X_hat`` is differentiable end to end. Otherwise gradients of
            ``u`` are computed on detached iterates (inference path, use under
            ``torch.no_grad``).

        Returns
        -------
        X_hat : Tensor, shape (n_batch, n_sources, n_times)
            Final iterate (unit-free: the cost is scale-invariant in its data
            term).
        history : SolverHistory
        """
        cfg = self.config
        if cfg.n_iter == 0 and X0 is not None and X0.dim() == 3:
            X = torch.as_tensor(X0, dtype=Y.dtype, device=Y.device)  # nothing to update: no copy
        else:
            X = initial_point(Y, self.n_sources, cfg, X0)
        if cfg.n_iter == 0:  # the start alone: no cost is computed (NaN in the history)
            rec = _Recorder()
            rec.add(cost=X.new_full(X.shape[:1], math.nan))
            return X, rec.history(X[:, 0, 0])
        L_norm_sq = operator_norm_sq(L)
        u, g, stats = self._cost_and_grad(X, Y, L, create_graph)
        hvp_state = {"gen": torch.Generator().manual_seed(cfg.seed + 1)}
        state = None
        rec = _Recorder()
        rec.add(cost=u)
        n_free = cfg.n_iter - (cfg.n_iter if cfg.grad_iters is None else cfg.grad_iters)
        graph = create_graph
        for it in range(cfg.n_iter):
            create_graph = graph and it >= n_free
            if graph and it == max(n_free, 0) and n_free > 0:
                # start of the differentiated part: recompute u, g with graph
                X = X.detach()
                state = _detach_state(state)
                u, g, stats = self._cost_and_grad(X, Y, L, True)
            with torch.set_grad_enabled(torch.is_grad_enabled() and (create_graph or not graph)):
                X, u, g, stats, state = self._iterate(X, Y, L, u, g, stats, state, L_norm_sq,
                                                      hvp_state, rec, create_graph)
        return X, rec.history(u)

    def _iterate(self, X, Y, L, u, g, stats, state, L_norm_sq, hvp_state, rec, create_graph):
        """One MM iteration with its certificate; returns the updated solver state."""
        cfg = self.config
        p_ref = reference_inverse_curvature(X, L, cfg.lam, L_norm_sq, cfg.eps, stats)
        p_tilde, state = self.curvature(X, g, p_ref, state)
        nu_lo = cfg.nu_lo * p_ref
        if cfg.bound == "scaled":
            p, nu_hi = self._scaled_curvature(X, Y, L, p_tilde, nu_lo, hvp_state)
        else:
            nu_hi = self._upper_bound(X, Y, L, g, stats, L_norm_sq, nu_lo, hvp_state)
            p = project_curvature(p_tilde, nu_lo, nu_hi)
        factor, shrinks, accepted, found = self._certify(X, Y, L, u, g, p, create_graph)
        X = torch.addcmul(X, _expand(factor, X), p * g, value=-cfg.gamma)
        if create_graph:
            u, g, stats = self._cost_and_grad(X, Y, L, True)
        elif found is not None:
            idx, u_f, g_f, stats_f = found
            if idx.numel() == u.shape[0] and bool((idx[1:] > idx[:-1]).all()):
                u, g, stats = u_f, g_f, stats_f  # all accepted at the first try
            else:
                u, g = _scatter(u, idx, u_f), _scatter(g, idx, g_f)
                stats = {k: _scatter(v, idx, stats_f[k]) for k, v in stats.items()}
        with torch.no_grad():
            pt = p_tilde.detach()
            hi = _expand(nu_hi if cfg.bound != "scaled" else torch.full_like(nu_hi, math.inf),
                         pt)  # "scaled" clips nothing above
            lo = torch.minimum(_expand(nu_lo, pt), hi)
            size = pt[0].numel()
            rec.add(cost=u, n_shrinks=shrinks, rejected=~accepted,
                    frac_hi=(pt >= hi).flatten(1).count_nonzero(1).to(u.dtype) / size,
                    frac_lo=(pt <= lo).flatten(1).count_nonzero(1).to(u.dtype) / size,
                    nu_hi=nu_hi)
        return X, u, g, stats, state


def _detach_state(state):
    """Detach the recurrent state (tensors, tuples of tensors, dataclasses)."""
    if state is None:
        return None
    if torch.is_tensor(state):
        return state.detach()
    if isinstance(state, tuple):
        return tuple(_detach_state(s) for s in state)
    if hasattr(state, "__dataclass_fields__"):
        return type(state)(**{k: _detach_state(getattr(state, k))
                              for k in state.__dataclass_fields__})
    return state


def _merge(found, idx, u, g, stats):
    if found is None:
        return idx, u, g, stats
    idx0, u0, g0, s0 = found
    return (torch.cat([idx0, idx]), torch.cat([u0, u]), torch.cat([g0, g]),
            {k: torch.cat([s0[k], stats[k]]) for k in s0})
