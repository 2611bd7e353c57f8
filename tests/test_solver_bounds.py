"""Tests of the curvature bounds against exact Hessians (tiny, float64)."""

import math

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

from mne_learned_mm.solver import (
    ConvAutoencoder,
    analytic_nu_hi,
    cosine_curvature,
    cost_and_grad,
    hessian_bound,
    hessian_power_iteration,
    hvp_nu_hi,
    lower_cost,
    project_curvature,
)
from mne_learned_mm.solver.bounds import paper_nu_hi

N_SENSORS, N_SOURCES = 6, 12


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed, n_times=5, eps=0.1, w_scale=1.0, b_scale=0.1, x_scale=1.0, hidden=6,
             odd=False):
    """Random lead field, data, point and autoencoder weights."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    L = randn(N_SENSORS, N_SOURCES)
    Y = randn(1, N_SENSORS, n_times)
    X = x_scale * randn(1, N_SOURCES, n_times)
    prior = ConvAutoencoder(N_SOURCES, hidden, 3, eps, odd=odd).double()
    with torch.no_grad():
        for conv in prior.convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(w_scale * randn(*conv.weight.shape) / math.sqrt(fan_in))
            conv.bias.copy_(b_scale * randn(*conv.bias.shape))
    return L, Y, X, prior


# regimes: smooth prior, sharp SoftReLU with small x, zero biases, t = 1
REGIMES = [
    dict(eps=0.1),
    dict(eps=0.01, x_scale=0.1),
    dict(eps=0.01, b_scale=0.0, x_scale=0.01, w_scale=2.0),
    dict(eps=1.0, w_scale=0.5, n_times=1),
]


def _hessian(X, Y, L, prior, lam):
    def cost(x):
        return lower_cost(x.view_as(X), Y, L, prior, lam).sum()

    return torch.autograd.functional.hessian(cost, X.reshape(-1))


def _spectral_norm(H):
    return torch.linalg.eigvalsh(H).abs().max().item()


def test_data_curvature_factor_is_exact():
    # with L = I the data-term Hessian norm is exactly κ(c) / ||x||²
    gen = torch.Generator().manual_seed(0)
    L = torch.eye(4, dtype=torch.float64)
    for _ in range(5):
        Y = torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
        X = torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
        H = _hessian(X, Y, L, None, 0.0)
        c = torch.nn.functional.cosine_similarity(Y.flatten(), X.flatten(), dim=0)
        expected = cosine_curvature(c).item() / X.square().sum().item()
        assert _spectral_norm(H) == pytest.approx(expected, rel=1e-8)
        bound = hessian_bound(X, Y, L, None, lam=0.0).item()
        assert bound == pytest.approx(expected, rel=1e-8)
    assert cosine_curvature(torch.tensor(1 / math.sqrt(3))).item() == pytest.approx(
        2 / math.sqrt(3))


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("lam", [0.3, 1.0])
@pytest.mark.parametrize("odd", [False, True])
def test_hessian_bound_dominates_exact_hessian(regime, lam, odd):
    ratios = []
    for seed in range(8):
        L, Y, X, prior = _problem(seed, odd=odd, **regime)
        exact = _spectral_norm(_hessian(X, Y, L, prior, lam))
        bound = hessian_bound(X, Y, L, prior, lam).item()
        assert bound >= exact, (seed, bound, exact)
        ratios.append(bound / exact)
    assert min(ratios) < 1e4  # a bound, not a vacuous number


@pytest.mark.parametrize("regime", REGIMES[:3])
def test_ball_bound_dominates_on_the_ball(regime):
    gen = torch.Generator().manual_seed(123)
    lam = 1.0
    for seed in range(4):
        L, Y, X, prior = _problem(seed, **regime)
        u, g = cost_and_grad(X, Y, L, prior, lam)
        x_norm = X.norm().item()
        LX_norm = (L @ X).norm().item()
        beta = prior(X).norm().item()
        scale = min(LX_norm / torch.linalg.matrix_norm(L, 2).item(), x_norm,
                    beta / prior.lipschitz_bound())
        radius = 0.5 * scale
        bound = hessian_bound(X, Y, L, prior, lam, radius=radius).item()
        for _ in range(4):
            d = torch.randn(X.shape, generator=gen, dtype=torch.float64)
            Xd = X + radius * d / d.norm()
            assert _spectral_norm(_hessian(Xd, Y, L, prior, lam)) <= bound


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("gamma", [1.0, 1.9])
def test_majorization_along_the_step(regime, gamma):
    gen = torch.Generator().manual_seed(7)
    lam = 1.0
    tau = torch.linspace(0, 1, 11, dtype=torch.float64)
    for seed in range(6):
        L, Y, X, prior = _problem(seed, **regime)
        u, g = cost_and_grad(X, Y, L, prior, lam)
        nu = analytic_nu_hi(X, Y, L, prior, lam, grad=g, gamma=gamma)
        assert torch.isfinite(nu).all() and (nu > 0).all()
        # a diagonal p anywhere in (0, ν_hi]
        p = nu.view(-1, 1, 1) * torch.rand(X.shape, generator=gen, dtype=torch.float64)
        d = -gamma * p * g
        lin = (g * d).sum().item()
        quad = (d * d / p).sum().item()
        for t in tau.tolist():
            u_t = lower_cost(X + t * d, Y, L, prior, lam).item()
            majorant = u.item() + t * lin + 0.5 * t * t * quad
            assert u_t <= majorant + 1e-12 * (1 + abs(majorant)), (seed, t)
        assert lower_cost(X + d, Y, L, prior, lam).item() < u.item()


def test_data_term_nu_hi_scales_like_x_squared():
    L, Y, X, prior = _problem(0)
    nu1 = analytic_nu_hi(X, Y, L, prior, lam=0.0)
    nu2 = analytic_nu_hi(3 * X, 5 * Y, L, prior, lam=0.0)
    torch.testing.assert_close(nu2, 9 * nu1)


def _phi_hessians(X, prior):
    def phi(x):
        return prior(x.view_as(X)).reshape(-1)

    x = X.reshape(-1)
    J = jacobian(phi, x)
    H = torch.stack([hessian(lambda z: phi(z)[i], x) for i in range(x.numel())])
    return torch.linalg.matrix_norm(J, 2), torch.linalg.matrix_norm(H, 2).max()


def _adversarial_prior(eps, n_sources=4, n_times=7, kernel_size=7):
    """Φ whose output Hessians align over 7 time samples.

    One hidden unit sits at the SoftReLU kink (``z1 = 0``) on a 7-sample
    window where ``x`` points along ``v``; the last layer spreads it to all
    sources and 7 time lags, and a second channel makes ``Φ(x) ⊥ v``, so
    ``<∇_b cos, D²Φ[h, h]>`` reaches ``√7 α/β`` while Prop. 1 allows
    ``2α√s/β`` with s the number of sources.
    """
    centre = kernel_size // 2
    prior = ConvAutoencoder(n_sources, 2, kernel_size, eps).double()
    v = torch.full((n_sources,), 1 / math.sqrt(n_sources), dtype=torch.float64)
    w = torch.tensor([1.0, -1.0] * (n_sources // 2), dtype=torch.float64) / math.sqrt(n_sources)
    with torch.no_grad():
        for conv in prior.convs:
            conv.weight.zero_()
            conv.bias.zero_()
        prior.conv1.weight[0, :, centre] = v
        prior.conv1.bias[:] = torch.tensor([-1.0, 1.0])
        prior.conv2.weight[0, 0, centre] = 1.0
        prior.conv2.weight[1, 1, centre] = 1.0
        prior.conv2.bias[0] = math.sqrt(eps)
        prior.conv3.weight[:, 0, :] = v[:, None]
        prior.conv3.weight[:, 1, centre] = w
    window = torch.zeros(n_times, dtype=torch.float64)
    start = n_times // 2 - centre
    window[start:start + kernel_size] = 1.0
    X = (v[:, None] * window + 0.05 * w[:, None]).unsqueeze(0)
    return prior, X


def test_paper_prop1_counterexample():
    # Prop. 1 with ρ = ||J_Φ(x)|| and α = max_i ||∇²Φ_i(x)|| (as stated) is
    # below the true Hessian norm: its √s misses the time dimension.
    gen = torch.Generator().manual_seed(0)
    prior, X = _adversarial_prior(eps=1e-4)
    L = torch.randn(N_SENSORS, X.shape[1], generator=gen, dtype=torch.float64)
    Y = torch.randn(1, N_SENSORS, X.shape[-1], generator=gen, dtype=torch.float64)
    exact = _spectral_norm(_hessian(X, Y, L, prior, 1.0))
    rho_x, alpha_x = _phi_hessians(X, prior)
    prop1 = 1 / paper_nu_hi(X, Y, L, prior, 1.0, rho=rho_x, alpha=alpha_x).item()
    assert prop1 < 0.9 * exact
    # App. B's (looser) α and our shipped bound stay above
    assert 1 / paper_nu_hi(X, Y, L, prior, 1.0).item() > exact
    assert hessian_bound(X, Y, L, prior, 1.0).item() > exact


@pytest.mark.parametrize("seed", range(3))
def test_power_iteration_matches_eigvalsh(seed):
    L, Y, X, prior = _problem(seed, eps=0.1)
    X2 = torch.cat([X, 2 * X])  # batched, two different Hessians
    Y2 = torch.cat([Y, -Y])
    gen = torch.Generator().manual_seed(seed)
    lam_max, v, rayleigh = hessian_power_iteration(X2, Y2, L, prior, 1.0, n_iter=400,
                                                   generator=gen)
    for b in range(2):
        exact = _spectral_norm(_hessian(X2[b:b + 1], Y2[b:b + 1], L, prior, 1.0))
        assert lam_max[b].item() <= exact * (1 + 1e-10)
        assert lam_max[b].item() == pytest.approx(exact, rel=1e-2)
        assert abs(rayleigh[b].item()) <= lam_max[b].item() * (1 + 1e-10)
    assert v.shape == X2.shape


def test_power_iteration_few_steps_is_from_below_and_warm_start_helps():
    L, Y, X, prior = _problem(5, eps=0.1)
    exact = _spectral_norm(_hessian(X, Y, L, prior, 1.0))
    gen = torch.Generator().manual_seed(0)
    lam_2, v, _ = hessian_power_iteration(X, Y, L, prior, 1.0, n_iter=2, generator=gen)
    assert lam_2.item() <= exact * (1 + 1e-10)
    lam_warm, _, _ = hessian_power_iteration(X, Y, L, prior, 1.0, n_iter=2, v0=v)
    assert lam_warm.item() >= lam_2.item() * (1 - 1e-10)


def test_hvp_nu_hi_guards():
    lam = torch.tensor([2.0, -4.0, 0.0, math.nan, math.inf], dtype=torch.float64)
    nu = hvp_nu_hi(lam, nu_fallback=1e-3)
    assert nu[0] == 0.5 and nu[1] == 0.25 and nu[2] == math.inf
    assert nu[3] == 1e-3 and nu[4] == 1e-3


def test_projection():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64) * 10
    lo = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    hi = torch.tensor([4.0, 2.5, 1.0], dtype=torch.float64)  # last: lo > hi
    q = project_curvature(p, lo, hi)
    assert (q <= hi.view(-1, 1, 1)).all()
    assert (q[:2] >= lo[:2].view(-1, 1, 1)).all()
    assert (q[2] == 1.0).all()  # the upper bound wins
    torch.testing.assert_close(project_curvature(q, lo, hi), q)  # idempotent
    inside = (p >= lo.view(-1, 1, 1)) & (p <= hi.view(-1, 1, 1))
    assert torch.equal(q[inside], p[inside])
    # scalar and infinite bounds
    q_inf = project_curvature(p, 1.0, torch.full((3,), math.inf, dtype=torch.float64))
    torch.testing.assert_close(q_inf, p.clamp_min(1.0))


@pytest.mark.parametrize("seed", range(2))
def test_preconditioned_power_iteration_and_scaled_majorant(seed):
    """Alg. 1 on P̃^{1/2} ∇²u P̃^{1/2} against the exact Hessian; Diag(1/p) ⪰ ∇²u."""
    L, Y, X, prior = _problem(seed, eps=0.1)
    gen = torch.Generator().manual_seed(seed)
    p_tilde = torch.rand(X.shape, generator=gen, dtype=torch.float64) * 10 + 0.1
    lam_max, _, _ = hessian_power_iteration(X, Y, L, prior, 1.0, n_iter=400, generator=gen,
                                            precond=p_tilde)
    H = _hessian(X, Y, L, prior, 1.0)
    root = p_tilde.reshape(-1).sqrt()
    exact = _spectral_norm(root[:, None] * H * root[None])
    assert lam_max.item() <= exact * (1 + 1e-10)
    assert lam_max.item() == pytest.approx(exact, rel=1e-2)
    p = p_tilde.reshape(-1) / exact  # the "scaled" bound with the exact scale
    assert torch.linalg.eigvalsh(torch.diag(1 / p) - H).min().item() >= -1e-9
    # and it is not the scalar bound: some p exceed 1/λ_max(∇²u)
    assert p.max().item() > 1 / _spectral_norm(H)
