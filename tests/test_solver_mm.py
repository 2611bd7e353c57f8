"""Tests of the learned MM loop and the unrolled baseline (tiny, float64)."""


import numpy as np
import pytest
import torch
from torch.func import functional_call

from mne_learned_mm.solver import (
    BOUNDS,
    ConvAutoencoder,
    CurvatureConfig,
    LearnedMM,
    MMConfig,
    PriorConfig,
    SolverHistory,
    UnrolledSolver,
    lower_cost,
    split_solver_config,
    upper_loss,
)

N_SENSORS, N_SOURCES = 6, 12
SMALL = dict(prior_hidden=6, prior_eps=0.1, net_hidden=5, net_rank=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed, n_batch=4, n_times=5):
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(N_SENSORS, N_SOURCES, generator=gen, dtype=torch.float64)
    X = torch.randn(n_batch, N_SOURCES, n_times, generator=gen, dtype=torch.float64)
    noise = torch.randn(n_batch, N_SENSORS, n_times, generator=gen, dtype=torch.float64)
    return L, L @ X + 0.3 * noise, X


def _solver(seed=0, cls=LearnedMM, **kwargs):
    torch.manual_seed(seed)
    return cls(N_SOURCES, **{**SMALL, **kwargs}).double()


def _assert_monotone(history, rtol=1e-12):
    cost = history.cost.numpy()
    tol = rtol * (1 + np.abs(cost[:, :-1]))
    assert (np.diff(cost, axis=1) <= tol).all()
    return cost


@pytest.mark.parametrize("bound", BOUNDS)
def test_every_accepted_step_decreases_cost(bound):
    for seed in range(3):
        L, Y, _ = _data(seed)
        solver = _solver(seed, bound=bound, n_iter=6)
        with torch.no_grad():
            X_hat, history = solver(Y, L)
        cost = _assert_monotone(history)
        accepted = ~history.rejected.numpy()
        assert (np.diff(cost, axis=1)[accepted] < 0).all()  # strict descent when accepted
        assert cost[:, -1].mean() < cost[:, 0].mean()
        torch.testing.assert_close(history.cost[:, -1], lower_cost(X_hat, Y, L, solver.prior))
        if bound in ("analytic", "min"):  # provable: the certificate never fails
            assert history.n_shrinks.sum() == 0 and not history.rejected.any()
            assert torch.isfinite(history.nu_hi).all() and (history.nu_hi > 0).all()
        if bound == "none":
            assert torch.isinf(history.nu_hi).all()


def _aggressive(solver, log_gain):
    # p̃ = p_ref · softplus(b)² with a large head bias: far too long steps
    with torch.no_grad():
        solver.curvature.head1.bias.fill_(log_gain)
        solver.curvature.head2.bias.fill_(log_gain)
    return solver


@pytest.mark.parametrize("bound", ["none", "hvp"])
def test_certificate_shrinks_long_steps(bound):
    L, Y, _ = _data(1)
    solver = _aggressive(_solver(1, bound=bound, n_iter=5, max_shrinks=30), 30.0)
    with torch.no_grad():
        _, history = solver(Y, L)
    _assert_monotone(history)
    if bound == "none":
        assert history.n_shrinks.sum() > 0  # the certificate did work
    assert not history.rejected.any()
    # the clip at ν_hi is reported where the bound is active
    if bound == "hvp":
        assert (history.frac_hi > 0.99).all()


def test_rejected_steps_keep_the_iterate():
    L, Y, _ = _data(2)
    solver = _aggressive(_solver(2, bound="none", n_iter=3, max_shrinks=0), 1e4)
    X0 = 1e-3 * torch.randn(4, N_SOURCES, 5, dtype=torch.float64)
    with torch.no_grad():
        X_hat, history = solver(Y, L, X0)
    assert history.rejected.all()
    torch.testing.assert_close(X_hat, X0)
    assert (history.cost == history.cost[:, :1]).all()


@pytest.mark.parametrize("n_times", [1, 5, 17])
@pytest.mark.parametrize("cls", [LearnedMM, UnrolledSolver])
def test_any_number_of_times(n_times, cls):
    L, Y, _ = _data(3, n_batch=2, n_times=n_times)
    solver = _solver(3, cls=cls, n_iter=3)
    with torch.no_grad():
        X_hat, history = solver(Y, L)
    assert X_hat.shape == (2, N_SOURCES, n_times)
    assert history.cost.shape == (2, 4) and torch.isfinite(history.cost).all()
    if cls is LearnedMM:
        _assert_monotone(history)


def _gradcheck_solve(bound, cls=LearnedMM):
    L, Y, X_true = _data(4, n_batch=2, n_times=3)
    solver = _solver(4, cls=cls, bound=bound, n_iter=2)
    # unit-scale X0: the prior's curvature (through ρ and α̃) dominates ν_hi
    X0 = torch.randn(2, N_SOURCES, 3, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    params = dict(solver.named_parameters())
    net = "curvature.head1.bias" if cls is LearnedMM else "modulator.head.bias"
    names = [net, "prior.conv1.bias", "prior.conv2.weight"]

    def loss(Y, *values):
        p = dict(params, **dict(zip(names, values)))
        X_hat, _ = functional_call(solver, p, (Y, L, X0), dict(create_graph=True))
        prior_p = {k[len("prior."):]: v for k, v in p.items() if k.startswith("prior.")}
        return upper_loss(X_true, X_hat, lambda z: functional_call(solver.prior, prior_p, (z,)))

    inputs = [Y.clone().requires_grad_()]
    inputs += [params[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(loss, inputs, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("bound", ["none", "analytic"])
def test_gradcheck_full_solve(bound):
    _gradcheck_solve(bound)


def test_gradcheck_baseline():
    _gradcheck_solve("none", UnrolledSolver)


def test_training_path_matches_inference_path():
    L, Y, X_true = _data(5)
    solver = _solver(5, bound="analytic", n_iter=4)
    with torch.no_grad():
        X_inf, h_inf = solver(Y, L)
    X_train, h_train = solver(Y, L, create_graph=True)
    torch.testing.assert_close(X_train.detach(), X_inf)
    torch.testing.assert_close(h_train.cost, h_inf.cost)
    upper_loss(X_true, X_train, solver.prior).backward()
    grads = [p.grad for p in solver.prior.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_batch_is_solved_sample_by_sample():
    L, Y, _ = _data(6, n_batch=3)
    solver = _solver(6, bound="analytic", n_iter=3)
    X0 = 1e-3 * torch.randn(3, N_SOURCES, 5, dtype=torch.float64)
    with torch.no_grad():
        X_all, h_all = solver(Y, L, X0)
        for b in range(3):
            X_b, h_b = solver(Y[b:b + 1], L, X0[b:b + 1])
            torch.testing.assert_close(X_b, X_all[b:b + 1], rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(h_b.cost, h_all.cost[b:b + 1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cls", [LearnedMM, UnrolledSolver])
def test_invariant_to_the_scale_of_the_data(cls):
    L, Y, _ = _data(7)
    solver = _solver(7, cls=cls, n_iter=4)
    with torch.no_grad():
        X1, h1 = solver(Y, L)
        X2, h2 = solver(1e-6 * Y, L)  # e.g. volts instead of microvolts
    torch.testing.assert_close(X1, X2)
    torch.testing.assert_close(h1.cost, h2.cost)


@pytest.mark.parametrize("bound", BOUNDS)
def test_sign_equivariant_with_odd_prior_and_even_curvature(bound):
    L, Y, _ = _data(8, n_batch=2)

    def solve(solver, Y):
        with torch.no_grad():
            X0 = solver.prior(torch.linalg.pinv(L) @ Y)  # odd start: Φ(K Y)
            return solver(Y, L, X0)

    sym = _solver(8, bound=bound, n_iter=5, prior_odd=True, net_even=True)
    X_pos, h_pos = solve(sym, Y)
    X_neg, h_neg = solve(sym, -Y)
    torch.testing.assert_close(X_neg, -X_pos, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h_neg.cost, h_pos.cost, rtol=1e-9, atol=1e-12)
    _assert_monotone(h_pos)
    assert (h_pos.cost[:, -1] < h_pos.cost[:, 0]).all()  # the steps do move
    if bound == "none":  # p̃ unclipped: either part alone is not enough
        for kw in (dict(prior_odd=True), dict(net_even=True)):
            plain = _solver(8, bound=bound, n_iter=5, **kw)
            assert not torch.allclose(solve(plain, -Y)[0], -solve(plain, Y)[0], rtol=1e-6)


def test_baseline_sign_equivariant_with_odd_prior_and_odd_modulator():
    L, Y, _ = _data(9, n_batch=2)

    def solve(solver, Y):
        with torch.no_grad():
            X0 = solver.prior(torch.linalg.pinv(L) @ Y)
            return solver(Y, L, X0)[0]

    sym = _solver(9, cls=UnrolledSolver, n_iter=4, prior_odd=True, net_even=True)
    assert sym.modulator.odd
    X_pos = solve(sym, Y)
    torch.testing.assert_close(solve(sym, -Y), -X_pos, rtol=1e-9, atol=1e-12)
    X0 = sym.prior(torch.linalg.pinv(L) @ Y).detach()
    assert not torch.allclose(X_pos, X0)  # the modulated steps do move
    plain = _solver(9, cls=UnrolledSolver, n_iter=4, prior_odd=True)  # negative control
    assert not torch.allclose(solve(plain, -Y), -solve(plain, Y), rtol=1e-6)


def test_history_and_interface_shared_with_baseline():
    L, Y, _ = _data(8, n_batch=2)
    n_iter = 3
    for cls in (LearnedMM, UnrolledSolver):
        solver = _solver(8, cls=cls, n_iter=n_iter, bound="analytic")
        with torch.no_grad():
            X_hat, history = solver(Y, L, X0=None)
        assert isinstance(history, SolverHistory)
        arrays = history.as_numpy()
        assert arrays["cost"].shape == (2, n_iter + 1)
        for key in ("n_shrinks", "rejected", "frac_hi", "frac_lo", "nu_hi"):
            assert arrays[key].shape == (2, n_iter)
        assert ((arrays["frac_hi"] >= 0) & (arrays["frac_hi"] <= 1)).all()
        X_given, _ = solver(Y, L, X0=torch.ones(N_SOURCES, 5, dtype=torch.float64))
        assert X_given.shape == X_hat.shape
    assert np.isnan(arrays["nu_hi"]).all()  # the baseline has no bound


def test_unrolled_baseline_trains():
    L, Y, X_true = _data(9, n_batch=2)
    solver = _solver(9, cls=UnrolledSolver, n_iter=3)
    X_hat, history = solver(Y, L, create_graph=True)
    upper_loss(X_true, X_hat, solver.prior).backward()
    assert solver.modulator.head.weight.grad.abs().sum() > 0
    assert solver.prior.conv1.weight.grad.abs().sum() > 0
    assert history.n_shrinks.sum() == 0


@pytest.mark.parametrize("rank,basis", [(None, None), (3, "fixed")])
def test_spatial_basis_variants(rank, basis):
    L, Y, _ = _data(10, n_batch=2)
    if basis == "fixed":  # right singular vectors of L
        basis = torch.linalg.svd(L, full_matrices=False)[2][:rank].T.contiguous()
    from mne_learned_mm.solver import CurvatureNet

    torch.manual_seed(0)
    net = CurvatureNet(N_SOURCES, hidden=4, rank=rank, basis=basis).double()
    torch.manual_seed(10)
    solver = LearnedMM(N_SOURCES, n_iter=3, prior_hidden=6, prior_eps=0.1, curvature=net).double()
    with torch.no_grad():
        _, history = solver(Y, L)
    _assert_monotone(history)
    n_basis_params = sum(p.numel() for p in net.enc_g.parameters())
    assert n_basis_params == (0 if rank is None or basis is not None else N_SOURCES * rank)


def test_config_validation():
    with pytest.raises(ValueError, match="gamma"):
        MMConfig(gamma=2.0)
    with pytest.raises(ValueError, match="bound"):
        MMConfig(bound="tight")
    with pytest.raises(ValueError, match="nu_lo"):
        MMConfig(nu_lo=0.0)
    cfg = MMConfig(n_iter=2)
    solver = LearnedMM(N_SOURCES, cfg, gamma=1.5, **SMALL)
    assert solver.config.n_iter == 2 and solver.config.gamma == 1.5
    assert cfg.gamma == 1.0  # not mutated


def test_flat_settings_go_to_their_configuration():
    # a model's config.json stores the settings flat: prior_* is Φ, net_* the curvature net
    flat = {"n_iter": 3, "bound": "hvp", "prior_hidden": 7, "prior_odd": True,
            "net_hidden": 5, "net_rank": 4, "net_even": True}
    settings = split_solver_config(flat)
    assert settings[MMConfig] == {"n_iter": 3, "bound": "hvp"}
    assert settings[PriorConfig] == {"hidden": 7, "odd": True}
    assert settings[CurvatureConfig] == {"hidden": 5, "rank": 4, "even": True}
    solver = LearnedMM(N_SOURCES, **flat)
    assert solver.config == MMConfig(n_iter=3, bound="hvp")
    assert solver.prior.conv1.out_channels == 7 and solver.prior.odd and solver.curvature.even
    # the same networks from their configurations
    same = LearnedMM(N_SOURCES, MMConfig(n_iter=3, bound="hvp"), PriorConfig(7, odd=True),
                     CurvatureConfig(5, 4, even=True))
    assert {k: v.shape for k, v in same.state_dict().items()} == {
        k: v.shape for k, v in solver.state_dict().items()}
    for bad in ("prior_context", "seed", "net_kernel"):  # removed settings are refused
        with pytest.raises(ValueError, match=f"Unknown solver setting.*{bad}"):
            LearnedMM(N_SOURCES, **{bad: 1})
    with pytest.raises(ValueError, match="prior_"):
        LearnedMM(N_SOURCES, prior=ConvAutoencoder(N_SOURCES), prior_hidden=4)
