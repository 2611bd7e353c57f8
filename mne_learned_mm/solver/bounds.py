r"""Upper bounds ν_hi on the inverse curvature of the lower-level cost.

Notation (per sample): ``x = vec(X) ∈ R^N`` with ``N = s·t``; the lead field
acts as ``A = L ⊗ I_t`` with ``||A|| = ||L||``; ``z = L X``;
``c_d = cos(Y, LX)``, ``φ = Φ(X)``, ``β = ||φ||``, ``c_p = cos(x, φ)``;
``ρ ≥ sup ||J_Φ||`` (product of certified bounds on the layers' operator
norms, :func:`~mne_learned_mm.solver.prior.conv_norm_bound`) and
``α̃ ≥ sup_{||h||=1} ||D²Φ(x)[h, h]||`` (see
:meth:`~mne_learned_mm.solver.prior.ConvAutoencoder.second_derivative_bound`).

Derivation of the shipped bound (:func:`hessian_bound`)
--------------------------------------------------------
1. Cosine Hessian. For ``C(a, b) = <a, b>/(||a|| ||b||)`` with ``c = C(a, b)``
   the blocks of the joint Hessian have exact norms

   ``||∇²_aa C|| = κ(c)/||a||²``, ``||∇²_bb C|| = κ(c)/||b||²``,
   ``||∇²_ab C|| = 1/(||a|| ||b||)``, with ``κ(c) = (|c| + sqrt(4 − 3c²))/2
   ≤ 2/√3``

   (``∇²_aa C = (c(3ââᵀ − I) − âb̂ᵀ − b̂âᵀ)/||a||²`` has eigenvalue ``−c`` off
   ``span{â, b̂}`` and ``(−c ± sqrt(4 − 3c²))/2`` on it;
   ``∇²_ab C = (I − b̂b̂ᵀ − ââᵀ + c âb̂ᵀ)/(||a|| ||b||)`` has norm ``max(1, |c|)``).
   Also ``||∇_b C|| = sqrt(1 − c²)/||b||``.
2. Data term ``1 − cos(Y, Ax)``: its Hessian is ``−Aᵀ ∇²_bb C A`` so
   ``||H_d|| ≤ κ(c_d) ||L||² / ||LX||²``. It does not depend on ``||Y||``.
3. Prior term ``1 − C(x, Φ(x))``: along a unit direction ``h``, with
   ``k = J h`` (``||k|| ≤ ρ``),
   ``hᵀH_p h = −[h; k]ᵀ ∇²C [h; k] − <∇_b C, D²Φ[h, h]>``, hence
   ``||H_p|| ≤ κ(c_p)(1/||x||² + ρ²/β²) + 2ρ/(||x|| β) + sqrt(1 − c_p²) α̃/β``.
4. Ball of radius ``r`` around ``x``: every ``x'`` with ``||x' − x|| ≤ r``
   has ``||Lx'|| ≥ ||LX|| − ||L|| r``, ``||x'|| ≥ ||x|| − r`` and
   ``||Φ(x')|| ≥ β − ρ r`` (Φ is ρ-Lipschitz). Replacing the norms by these
   lower bounds and ``κ``, ``sqrt(1 − c²)`` by ``2/√3``, ``1`` gives
   ``M_r ≥ sup_{ball} ||∇²u||`` (valid while all three lower bounds are
   positive).
5. Step. The MM step is ``d = −γ p ⊙ g`` with ``0 < p ≤ ν``, so
   ``||d|| ≤ γ ν ||g||``. If ``ν ≤ min(1/M_r, r/(γ||g||))`` the segment
   ``[x, x + d]`` stays in the ball and Taylor's theorem gives
   ``u(x + d) ≤ u(x) + <g, d> + M_r ||d||²/2 ≤ u(x) + <g, d> + <d, d/p>/2``:
   the diagonal quadratic majorizes ``u`` on the step and the descent
   certificate holds. :func:`analytic_nu_hi` returns the largest such ``ν``
   over a few radii ``r = f · min(||LX||/||L||, ||x||, β/ρ)``.

Why not Prop. 1 as printed (:func:`paper_nu_hi`)
------------------------------------------------
Prop. 1 bounds the Hessian at ``x`` only, while a majorant must hold at
``x + d`` (the curvature of a cosine grows like ``1/||x||²`` towards the
origin and the step can move towards it). Its ``√s`` should be ``√(s t)``
for matrices (``||φ||₁ ≤ √N ||φ||``), and its α (per-output Hessian norms)
is the wrong quantity: with ρ = ||J_Φ(x)|| and α = max_i ||∇²Φ_i(x)|| as
stated it fails. Counterexample (``tests/test_solver_bounds.py``): s = 4,
t = 7, n = 6, Φ with 7-tap kernels, 2 hidden channels, ε = 1e-4, one hidden
unit at the SoftReLU kink on a 7-sample window, λ = 1: ||∇²u(x)|| = 4959
while Prop. 1 gives μ1 + λμ2 = 3785 (ρ(x) = 2.74, α(x) = 2500). With App.
B's α bound (and ``||W2||₁``) the formula is far looser and held in all our
draws (≈ 20× the true norm at realistic sizes, vs 1.1-1.6× for
:func:`hessian_bound`).

Alg. 1 (:func:`hessian_power_iteration`) estimates ``||∇²u(x)||`` from
Hessian-vector products (double backward); it is a local, from-below
estimate: steps taken with it rely on the descent certificate.
"""

import math

import torch

from .init import unit_frobenius
from .objective import DEFAULT_EPS, batch_dot, cost_and_grad, lower_cost_terms, safe_norm

KAPPA_MAX = 2.0 / math.sqrt(3.0)


def operator_norm_sq(L):
    """Squared spectral norm ``||L||²`` of the lead field.

    Parameters
    ----------
    L : Tensor, shape (n_sensors, n_sources)
        Lead field (detached: no gradient flows to it).

    Returns
    -------
    norm_sq : Tensor, shape ()
    """
    L = L.detach()
    gram = L @ L.T if L.shape[0] <= L.shape[1] else L.T @ L
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(0)


def cosine_curvature(c):
    """``κ(c) = (|c| + sqrt(4 − 3c²))/2``: ``||a||² ||∇²_aa cos(a, b)||``.

    Parameters
    ----------
    c : Tensor
        Cosine values in [-1, 1].

    Returns
    -------
    kappa : Tensor
        Same shape as ``c``, in ``[1, 2/√3]``.
    """
    c = c.clamp(-1.0, 1.0)
    return 0.5 * (c.abs() + torch.sqrt(4.0 - 3.0 * c * c))


class _Geometry:
    """Per-sample quantities entering the analytic bounds (detached)."""

    def __init__(self, X, Y, L, prior, lam, eps, L_norm_sq=None, stats=None):
        if stats is None:
            with torch.no_grad():
                _, stats = lower_cost_terms(X.detach(), Y, L, prior, lam, eps)
        self.L_norm = torch.sqrt(operator_norm_sq(L) if L_norm_sq is None else L_norm_sq)
        self.LX_norm = stats["LX_norm"]
        self.x_norm = stats["x_norm"]
        self.c_data = stats["cos_data"]
        self.beta = stats["phi_norm"]
        self.c_prior = stats["cos_prior"]
        grad_on = bool(self.x_norm.requires_grad)
        self.rho = prior.lipschitz_bound(grad_on) if lam else 0.0
        self.alpha = prior.second_derivative_bound(grad_on) if lam else 0.0


def _prior_curvature(x_norm, beta, rho, alpha, kappa, sine):
    return (
        kappa * (1.0 / x_norm**2 + rho**2 / beta**2)
        + 2.0 * rho / (x_norm * beta)
        + sine * alpha / beta
    )


def hessian_bound(
    X, Y, L, prior, lam=1.0, radius=0.0, eps=DEFAULT_EPS, L_norm_sq=None, stats=None
):
    """Bound on ``||∇²u(x')||`` over the ball ``||x' − x|| ≤ radius``.

    See the module docstring for the derivation. With ``radius=0`` it bounds
    the Hessian at ``X`` and uses the exact cosine factors ``κ(c)``.

    Parameters
    ----------
    X : Tensor, shape (n_batch, n_sources, n_times)
        Centre of the ball.
    Y : Tensor, shape (n_batch, n_sensors, n_times)
        Sensor data.
    L : Tensor, shape (n_sensors, n_sources)
        Lead field.
    prior : ConvAutoencoder
        Autoencoder Φ (provides ``lipschitz_bound`` and
        ``second_derivative_bound``).
    lam : float
        Weight λ of the prior term.
    radius : float | Tensor, shape (n_batch,)
        Ball radius r ≥ 0.
    eps : float
        Smoothing of the cosine norms.
    L_norm_sq : Tensor, shape () | None
        Precomputed ``||L||²``.
    stats : dict | None
        Precomputed ``stats`` of
        :func:`~mne_learned_mm.solver.objective.lower_cost_terms` at ``X``.
        If they carry a graph, the bound is differentiable with respect to
        ``X`` and Φ's weights (the layer norms enter through their top
        singular vectors); otherwise it is detached.

    Returns
    -------
    bound : Tensor, shape (n_batch,)
        ``+inf`` where the ball reaches a zero of ``LX``, ``X`` or ``Φ(X)``.
    """
    geo = _Geometry(X, Y, L, prior, lam, eps, L_norm_sq, stats)
    return _ball_bound(geo, lam, radius)


def _ball_bound(geo, lam, radius):
    radius = torch.as_tensor(radius, dtype=geo.x_norm.dtype, device=geo.x_norm.device)
    local = bool((radius == 0).all())
    if local:
        kd, kp = cosine_curvature(geo.c_data), cosine_curvature(geo.c_prior)
        sine = torch.sqrt((1.0 - geo.c_prior**2).clamp_min(0))
    else:
        kd = kp = KAPPA_MAX
        sine = 1.0
    lx = geo.LX_norm - geo.L_norm * radius
    bound = kd * geo.L_norm**2 / lx**2
    invalid = lx <= 0
    if lam:
        xn = geo.x_norm - radius
        beta = geo.beta - geo.rho * radius
        bound = bound + lam * _prior_curvature(xn, beta, geo.rho, geo.alpha, kp, sine)
        invalid = invalid | (xn <= 0) | (beta <= 0)
    invalid = invalid | ~torch.isfinite(bound)
    return torch.where(invalid, torch.full_like(bound, math.inf), bound)


def analytic_nu_hi(
    X,
    Y,
    L,
    prior,
    lam=1.0,
    grad=None,
    gamma=1.0,
    eps=DEFAULT_EPS,
    L_norm_sq=None,
    stats=None,
    radius_fractions=(0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7),
):
    """Provable upper bound ν_hi on the inverse curvature (shipped bound).

    Any ``p`` with ``0 < p ≤ ν_hi`` makes ``x ↦ u(X) + <g, x − X> +
    <x − X, (x − X)/p>/2`` majorize ``u`` on the whole step
    ``x = X − γ' p ⊙ g`` for every ``0 < γ' ≤ gamma`` (module docstring,
    step 5). Without ``grad`` it returns ``1 / M_0``, the reciprocal of the
    bound on the Hessian at ``X`` (no guarantee along a step).

    Parameters
    ----------
    X, Y, L, prior, lam, eps, L_norm_sq, stats
        See :func:`hessian_bound`.
    grad : Tensor, shape (n_batch, n_sources, n_times) | None
        Gradient ``g = ∇u(X)``.
    gamma : float
        Largest step factor γ the bound must cover.
    radius_fractions : tuple of float
        Candidate radii, as fractions (< 1) of
        ``min(||LX||/||L||, ||X||, β/ρ)``; the best valid one is kept.

    Returns
    -------
    nu_hi : Tensor, shape (n_batch,)
    """
    geo = _Geometry(X, Y, L, prior, lam, eps, L_norm_sq, stats)
    if grad is None:
        return 1.0 / _ball_bound(geo, lam, 0.0)
    g_norm = safe_norm(grad, eps)
    scale = torch.minimum(geo.LX_norm / geo.L_norm, geo.x_norm)
    if lam and geo.rho > 0:
        scale = torch.minimum(scale, geo.beta / geo.rho)
    fracs = torch.as_tensor(radius_fractions, dtype=scale.dtype, device=scale.device)
    radius = fracs[:, None] * scale[None, :]  # (n_radii, n_batch)
    nu = torch.minimum(1.0 / _ball_bound(geo, lam, radius), radius / (gamma * g_norm))
    return nu.amax(0).clamp_min(0)


def paper_nu_hi(X, Y, L, prior, lam=1.0, eps=DEFAULT_EPS, rho=None, alpha=None):
    """Prop. 1 of the paper, literally: ``1 / (μ1 + λ μ2)``.

    ``μ1 = 5||L||²/||LX||²``,
    ``μ2 = (5ρ + 1)/(β||x||) + 2α√s/β + 4(ρ/β + 1/||x||)²`` with ``s`` the
    number of sources, ``β = ||Φ(X)||``. By default ``ρ`` is the product of
    the layer operator norms and ``α`` is App. B's bound
    ``||W3|| (||W1||² ||W2||² + ||W2||₁ ||W1||²)/(2ε)`` (``||W2||₁`` the
    induced ℓ1 norm of the convolution). Kept for comparison only.

    Parameters
    ----------
    X, Y, L, prior, lam, eps
        See :func:`hessian_bound`.
    rho, alpha : float | Tensor, shape (n_batch,) | None
        Override ρ and α (e.g. with exact values at ``X``).

    Returns
    -------
    nu_hi : Tensor, shape (n_batch,)
    """
    geo = _Geometry(X, Y, L, prior, lam, eps)
    n1, n2, n3 = prior.layer_norms()
    if rho is None:
        rho = geo.rho
    if alpha is None:
        w2_l1 = prior.second_layer_l1_norm()
        alpha = n3 * (n1**2 * n2**2 + w2_l1 * n1**2) / (2.0 * prior.eps)
    n_sources = X.shape[1]
    mu1 = 5.0 * geo.L_norm**2 / geo.LX_norm**2
    if not lam:
        return 1.0 / mu1
    xn, beta = geo.x_norm, geo.beta
    mu2 = (
        (5.0 * rho + 1.0) / (beta * xn)
        + 2.0 * alpha * math.sqrt(n_sources) / beta
        + 4.0 * (rho / beta + 1.0 / xn) ** 2
    )
    return 1.0 / (mu1 + lam * mu2)


def hessian_power_iteration(
    X, Y, L, prior, lam=1.0, n_iter=10, v0=None, eps=DEFAULT_EPS, generator=None,
    precond=None,
):
    """Alg. 1: power iteration on Hessian-vector products, per sample.

    ``v ← ∇²u(x) v / ||∇²u(x) v||`` with the HVP from double backward (with
    ``precond = p̃``: on ``P̃^{1/2} ∇²u(x) P̃^{1/2}``, ``P̃ = Diag(p̃)``). The
    estimate is ``||∇²u(x) v_{K-1}||`` for the last unit iterate, which is
    ``≥ |v_{K-1}ᵀ ∇²u v_{K-1}|`` (the Rayleigh quotient of Alg. 1, also
    returned), tends to the largest eigenvalue magnitude, never exceeds it,
    and does not stall when ``±λ`` share the top magnitude.

    Parameters
    ----------
    X, Y, L, prior, lam, eps
        See :func:`hessian_bound`.
    n_iter : int
        Number K ≥ 1 of Hessian-vector products.
    v0 : Tensor, shape (n_batch, n_sources, n_times) | None
        Starting vectors (e.g. the previous MM iteration's); if None, one
        Gaussian vector shared by all samples (batch-independent results).
    generator : torch.Generator | None
        Random generator for the Gaussian start.
    precond : Tensor, shape (n_batch, n_sources, n_times) | None
        Positive diagonal ``p̃`` of the preconditioner (see above).

    Returns
    -------
    lam_max : Tensor, shape (n_batch,)
        Estimate of ``max |λ(∇²u(x))|`` (of the preconditioned Hessian with
        ``precond``).
    v : Tensor, shape (n_batch, n_sources, n_times)
        Last unit iterate (dominant eigenvector estimate).
    rayleigh : Tensor, shape (n_batch,)
        ``v_{K-1}ᵀ ∇²u v_{K-1}``.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    x = X.detach().requires_grad_(True)
    with torch.enable_grad():
        _, grad = cost_and_grad(x, Y, L, prior, lam, eps, create_graph=True)
    if v0 is None:
        # one start vector shared by all samples: a sample's result does not depend on
        # the other samples of its batch (Epochs solved together = one by one)
        v0 = torch.randn(x.shape[1:], generator=generator, dtype=x.dtype, device="cpu")
        v0 = v0.to(x.device).expand(x.shape)
    v = unit_frobenius(v0.detach().to(x))
    root = None if precond is None else precond.detach().sqrt()
    for _ in range(n_iter):
        if root is None:
            (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True)
        else:
            (hv,) = torch.autograd.grad(grad, x, grad_outputs=root * v, retain_graph=True)
            hv = root * hv
        lam_max = hv.reshape(hv.shape[0], -1).norm(dim=-1)
        rayleigh = batch_dot(v, hv)
        v = unit_frobenius(hv)
    return lam_max.detach(), v.detach(), rayleigh.detach()


def hvp_nu_hi(lam_max, nu_fallback):
    """ν_hi = 1/λ̂_max with guards.

    Parameters
    ----------
    lam_max : Tensor, shape (n_batch,)
        Curvature estimate (magnitude).
    nu_fallback : float | Tensor, shape (n_batch,)
        Value used where the estimate is not finite (e.g. ν_lo).

    Returns
    -------
    nu_hi : Tensor, shape (n_batch,)
        ``+inf`` where ``λ̂ = 0``.
    """
    lam_max = lam_max.abs()
    nu = 1.0 / lam_max
    fallback = torch.as_tensor(nu_fallback, dtype=nu.dtype, device=nu.device).expand_as(nu)
    return torch.where(torch.isfinite(lam_max), nu, fallback)
