"""Starting points: the Tikhonov operator, the one start function."""

import numpy as np
import pytest
import torch

from mne_learned_mm.solver import LearnedMM
from mne_learned_mm.solver.init import initial_point, tikhonov_operator


def _problem(n=12, s=30, b=3, t=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(n, s, generator=gen, dtype=torch.float64)
    Y = torch.randn(b, n, t, generator=gen, dtype=torch.float64)
    return L - L.mean(0), Y - Y.mean(1, keepdim=True)


def test_tikhonov_operator_closed_form_and_batched():
    L, _ = _problem()
    reg = 0.3
    Ln = L.numpy()
    lam = reg * np.trace(Ln @ Ln.T) / Ln.shape[0]
    expected = Ln.T @ np.linalg.inv(Ln @ Ln.T + lam * np.eye(Ln.shape[0]))
    np.testing.assert_allclose(tikhonov_operator(L, reg).numpy(), expected, rtol=1e-10)
    stacked = torch.stack([L, 2 * L])
    batched = tikhonov_operator(stacked, reg)
    assert batched.shape == (2, 30, 12)
    np.testing.assert_allclose(batched[0].numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(batched[1].numpy(), expected / 2, rtol=1e-10)  # scale free


def test_initial_point_kinds():
    L, Y = _problem()
    K = tikhonov_operator(L)
    X0 = initial_point(Y, L, "tikhonov")
    torch.testing.assert_close(X0, initial_point(Y, L, K=K))  # the operator is the default
    KY = torch.einsum("sn,bnt->bst", K, Y)
    torch.testing.assert_close(X0, KY / KY.flatten(1).norm(dim=1)[:, None, None])
    prior = torch.nn.Conv1d(30, 30, 1).double()
    P = prior(X0)
    torch.testing.assert_close(initial_point(Y, L, "prior", prior=prior),
                               P / P.flatten(1).norm(dim=1)[:, None, None])
    # the paper's start: 1e-3 N(0, 1) from the seed, what the solver starts from without X0
    Xr = initial_point(Y, L, "random", seed=4)
    gen = torch.Generator().manual_seed(4)
    torch.testing.assert_close(Xr, 1e-3 * torch.randn(3, 30, 5, generator=gen,
                                                      dtype=torch.float64), rtol=0, atol=0)
    solver = LearnedMM(30, n_iter=0, prior_hidden=4, net_hidden=2, net_rank=2).double()
    assert torch.equal(solver(Y, L)[0], initial_point(Y, L, "random"))
    for kind, needs in (("prior", "prior="), ("amortized", "network=")):
        with pytest.raises(ValueError, match=needs):
            initial_point(Y, L, kind)
    with pytest.raises(ValueError, match="init must be one of"):
        initial_point(Y, L, "zeros")


def test_sloreta_operator_standardises_and_locates_single_sources():
    L, _ = _problem(n=16, s=40)
    depth = torch.logspace(0, 1.5, 40, dtype=torch.float64)  # superficial (strong) to deep (weak)
    L = L / depth
    reg = 0.2
    K = tikhonov_operator(L, reg)
    Ks = tikhonov_operator(L, reg, "sloreta")
    lam = reg * torch.trace(L @ L.T) / L.shape[0]
    cov = Ks @ (L @ L.T + lam * torch.eye(16, dtype=L.dtype)) @ Ks.T  # of K Y, Y = L x + n
    torch.testing.assert_close(torch.diagonal(cov), torch.ones(40, dtype=L.dtype))
    # a single noise-free source peaks at its own place in the sLORETA image,
    # not always in the minimum-norm one (which pulls weakly seen, deep sources towards
    # strongly seen ones)
    peak = lambda op: (op @ L).abs().argmax(0)  # noqa: E731 (column j: image of source j)
    assert torch.equal(peak(Ks), torch.arange(40))
    assert (peak(K) != torch.arange(40)).sum() > 5
    stacked = tikhonov_operator(torch.stack([L, 3 * L]), reg, "sloreta")
    torch.testing.assert_close(stacked[0], Ks)
    torch.testing.assert_close(stacked[1], Ks / 3)  # scale free
    with pytest.raises(ValueError, match="operator must be one of"):
        tikhonov_operator(L, reg, "dspm")
