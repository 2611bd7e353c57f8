"""Learned MM solver: ``x ← x − γ p ⊙ ∇u(x)`` with a descent certificate."""

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .bounds import analytic_nu_hi, hessian_power_iteration, hvp_nu_hi, operator_norm_sq
from .init import initial_point
from .majorant import (
    CurvatureConfig,
    CurvatureNet,
    _expand,
    project_curvature,
    reference_inverse_curvature,
)
from .objective import batch_dot, cost_and_grad, lower_cost_terms
from .prior import ConvAutoencoder, PriorConfig

BOUNDS = ("analytic", "hvp", "min", "none", "scaled")
_HVP_SEED = 1  # seed of the power iteration's start vectors


@dataclass
class MMConfig:
    """The MM iteration of :class:`LearnedMM` (and of the unrolled baseline).

    The networks have their own configurations,
    :class:`~.prior.PriorConfig` and :class:`~.majorant.CurvatureConfig`.

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
        Hessian-vector products K per MM iteration for the ``"hvp"``,
        ``"min"`` and ``"scaled"`` bounds (warm-started from the previous
        iteration's vector).
    max_shrinks : int
        Halvings of p allowed per iteration when the descent certificate
        fails; after that the step is rejected for that sample.
    grad_iters : int | None
        Truncated backpropagation (``create_graph=True`` only): the last
        ``grad_iters`` iterations are differentiated, the earlier ones run
        without graph (None: all iterations).
    """

    n_iter: int = 10
    gamma: float = 1.0
    bound: str = "analytic"
    lam: float = 1.0
    nu_lo: float = 1e-6
    hvp_iters: int = 5
    max_shrinks: int = 8
    grad_iters: int = None

    def __post_init__(self):
        if not 0 < self.gamma < 2:
            raise ValueError(f"gamma must be in (0, 2), got {self.gamma}")
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.n_iter < 0 or self.max_shrinks < 0 or self.hvp_iters < 1:
            raise ValueError("n_iter and max_shrinks must be >= 0 and hvp_iters >= 1")
        if not self.nu_lo > 0:
            raise ValueError(f"nu_lo must be positive, got {self.nu_lo}")


#: prefix of a flat solver setting -> the configuration it belongs to
_PREFIXES = {"prior_": PriorConfig, "net_": CurvatureConfig}


def split_solver_config(flat):
    """Sort flat solver settings into the three configurations.

    A model's ``config.json`` (and :class:`~mne_learned_mm.training.TrainConfig`'s
    ``solver``) stores them flat: ``prior_<f>`` is field ``f`` of
    :class:`~.prior.PriorConfig`, ``net_<f>`` of
    :class:`~.majorant.CurvatureConfig`, any other key a field of
    :class:`MMConfig`.

    Parameters
    ----------
    flat : dict
        E.g. ``{"n_iter": 10, "bound": "hvp", "prior_hidden": 256, "net_even": True}``.

    Returns
    -------
    settings : dict
        ``{MMConfig: {...}, PriorConfig: {...}, CurvatureConfig: {...}}``,
        field names without their prefix.
    """
    settings = {MMConfig: {}, PriorConfig: {}, CurvatureConfig: {}}
    unknown = []
    for key, value in flat.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        cls = _PREFIXES.get(prefix, MMConfig)
        name = key[len(prefix):]
        if name not in {f.name for f in fields(cls)}:
            unknown.append(key)
        settings[cls][name] = value
    if unknown:
        known = [f.name for f in fields(MMConfig)] + [
            p + f.name for p, cls in _PREFIXES.items() for f in fields(cls)]
        raise ValueError(f"Unknown solver setting(s) {sorted(unknown)}; the solver settings "
                         f"are {', '.join(known)}")
    return settings


def _build_parts(n_sources, config, prior, net, make_net, overrides):
    """MM config, Φ and the learned step network of a solver.

    ``prior`` and ``net`` are modules, configurations or None (defaults);
    ``overrides`` are flat settings (:func:`split_solver_config`) applied
    to the configurations.
    """
    settings = split_solver_config(overrides)
    config = replace(MMConfig() if config is None else config, **settings[MMConfig])
    if not isinstance(prior, nn.Module):
        p = replace(prior or PriorConfig(), **settings[PriorConfig])
        prior = ConvAutoencoder(n_sources, p.hidden, eps=p.eps, odd=p.odd)
    elif settings[PriorConfig]:
        raise ValueError("prior_* settings apply to a PriorConfig, not to a given Φ module")
    if not isinstance(net, nn.Module):
        net = make_net(replace(net or CurvatureConfig(), **settings[CurvatureConfig]))
    elif settings[CurvatureConfig]:
        raise ValueError("net_* settings apply to a CurvatureConfig, not to a given module")
    return config, prior, net


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
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}


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


def start_only_history(like):
    """History of solves that are their start alone: no iteration, no cost (NaN).

    Parameters
    ----------
    like : Tensor, shape (n_batch,)
        Gives the batch size, dtype and device.

    Returns
    -------
    history : SolverHistory
    """
    rec = _Recorder()
    rec.add(cost=torch.full_like(like, math.nan))
    return rec.history(like)


def _batched_start(Y, L, X0=None):
    """``X0`` broadcast over the batch (a copy), or the paper's random start if None.

    Parameters
    ----------
    Y : Tensor, shape (n_batch, n_sensors, n_times)
    L : Tensor, shape (n_sensors, n_sources)
    X0 : Tensor, shape (n_sources, n_times) or (n_batch, n_sources, n_times) | None
        Given start, e.g. from :func:`~.init.initial_point`.

    Returns
    -------
    X0 : Tensor, shape (n_batch, n_sources, n_times)
    """
    if X0 is None:
        return initial_point(Y, L, "random")
    shape = (Y.shape[0], L.shape[1], Y.shape[-1])
    return torch.as_tensor(X0, dtype=Y.dtype, device=Y.device).expand(shape).clone()


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
        The MM iteration; defaults of :class:`MMConfig` if None.
    prior : nn.Module | PriorConfig | None
        Autoencoder Φ, or the configuration of a
        :class:`~.prior.ConvAutoencoder` (defaults if None; the analytic
        bound needs its ``lipschitz_bound`` and ``second_derivative_bound``).
    curvature : nn.Module | CurvatureConfig | None
        Curvature net, or the configuration of a
        :class:`~.majorant.CurvatureNet` (defaults if None).
    **overrides
        Flat settings (:func:`split_solver_config`), e.g. ``n_iter=3`` or
        ``prior_hidden=256``, applied to the configurations.
    """

    def __init__(self, n_sources, config=None, prior=None, curvature=None, **overrides):
        super().__init__()
        self.config, self.prior, self.curvature = _build_parts(
            n_sources, config, prior, curvature, lambda c: CurvatureNet(
                n_sources, c.hidden, rank=c.rank, even=c.even), overrides)
        self.n_sources = n_sources

    def _cost_and_grad(self, X, Y, L, create_graph):
        cfg = self.config
        return cost_and_grad(X, Y, L, self.prior, cfg.lam, create_graph=create_graph,
                             return_stats=True)

    def _upper_bound(self, X, Y, L, g, stats, L_norm_sq, nu_lo, hvp_state):
        cfg = self.config
        nu_hi = torch.full_like(nu_lo, math.inf)
        if cfg.bound in ("analytic", "min"):
            nu_hi = analytic_nu_hi(X, Y, L, self.prior, cfg.lam, grad=g, gamma=cfg.gamma,
                                   L_norm_sq=L_norm_sq, stats=stats)
        if cfg.bound in ("hvp", "min"):
            lam_max, hvp_state["v"], _ = hessian_power_iteration(
                X, Y, L, self.prior, cfg.lam, cfg.hvp_iters, v0=hvp_state.get("v"),
                generator=hvp_state["gen"])
            nu_hi = torch.minimum(nu_hi, hvp_nu_hi(lam_max, nu_lo))
        return nu_hi

    def _scaled_curvature(self, X, Y, L, p_tilde, nu_lo, hvp_state):
        """``p = p̃ / λ̂_max(P̃^{1/2} ∇²u P̃^{1/2})``; returns ``p`` and the scale ``1/λ̂``."""
        cfg = self.config
        shape = torch.maximum(p_tilde, _expand(nu_lo, p_tilde))
        lam_max, hvp_state["v"], _ = hessian_power_iteration(
            X, Y, L, self.prior, cfg.lam, cfg.hvp_iters, v0=hvp_state.get("v"),
            generator=hvp_state["gen"], precond=shape)
        scale = hvp_nu_hi(lam_max, torch.ones_like(lam_max))
        return shape * _expand(scale, shape), scale

    def _certify(self, X, Y, L, u, g, p, create_graph):
        """Per-sample step factors ``2^-k`` (0 if rejected) passing the certificate.

        Returns the factors, shrink counts, acceptance and (inference path
        only) the indices, cost, gradient and stats at the accepted points.
        """
        cfg = self.config
        tol_r = 16 * torch.finfo(u.dtype).eps  # rounding of u
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
                    u_t, stats_t = lower_cost_terms(trial, Ys, L, self.prior, cfg.lam)
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
            Initial point (e.g. :func:`~.init.initial_point`); the paper's
            random start if None.
        create_graph : bool
            Training path: keep the graph of every gradient (double backward)
            so ``X_hat`` is differentiable end to end, through the last
            ``config.grad_iters`` iterations only if set. Otherwise gradients
            of ``u`` are computed on detached iterates (inference path, use
            under ``torch.no_grad``).

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
            X = _batched_start(Y, L, X0)
        if cfg.n_iter == 0:
            return X, start_only_history(X[:, 0, 0])
        L_norm_sq = operator_norm_sq(L)
        free = self._free_iterations(create_graph)
        u, g, stats = self._cost_and_grad(X, Y, L, create_graph and free == 0)
        hvp_state = {"gen": torch.Generator().manual_seed(_HVP_SEED)}
        state = None
        rec = _Recorder()
        rec.add(cost=u)
        for it in range(cfg.n_iter):
            differentiate = create_graph and it >= free
            if differentiate and it == free and free > 0:  # the graph starts here
                X, state = X.detach(), _detach_state(state)
                u, g, stats = self._cost_and_grad(X, Y, L, True)
            # the free iterations of the training path run without autograd
            with torch.set_grad_enabled(torch.is_grad_enabled()
                                        and (differentiate or not create_graph)):
                X, u, g, stats, state = self._iterate(X, Y, L, u, g, stats, state, L_norm_sq,
                                                      hvp_state, rec, differentiate)
        return X, rec.history(u)

    def _free_iterations(self, create_graph):
        """Iterations run without graph before the differentiated ones (``grad_iters``)."""
        cfg = self.config
        if not create_graph or cfg.grad_iters is None:
            return 0
        return max(cfg.n_iter - cfg.grad_iters, 0)

    def _iterate(self, X, Y, L, u, g, stats, state, L_norm_sq, hvp_state, rec, create_graph):
        """One MM iteration with its certificate; returns the updated solver state."""
        cfg = self.config
        p_ref = reference_inverse_curvature(X, L, cfg.lam, L_norm_sq, stats=stats)
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
