"""Starting points: the Tikhonov operator, one per sample for dropped channels."""

import numpy as np
import pytest
import torch

from mne_learned_mm.simulation.noise import apply_channel_mask
from mne_learned_mm.solver.init import (
    deflation_start,
    initial_point,
    kept_channels,
    masked_leadfield,
    strongest_blob,
    tikhonov_operator,
)


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


def test_start_on_each_samples_kept_channels():
    L, Y = _problem()
    mask = np.ones((3, 12), bool)
    mask[1, [2, 5, 7]] = False
    mask[2, :6] = False
    Ym = torch.stack([torch.as_tensor(apply_channel_mask(Y[b].numpy(), mask[b]))
                      for b in range(3)])
    keep = kept_channels(Ym)
    np.testing.assert_array_equal(keep.numpy(), mask)
    L_b = masked_leadfield(L, keep)
    assert not L_b[2, :6].any()
    X0 = initial_point(Ym, L, K=tikhonov_operator(L_b))
    # all channels kept: the shared operator
    torch.testing.assert_close(X0[:1], initial_point(Ym[:1], L, K=tikhonov_operator(L)))
    # channels dropped: the same as a forward of the kept channels only, re-referenced
    for b in (1, 2):
        L_kept = L[mask[b]] - L[mask[b]].mean(0)
        expected = initial_point(Ym[b:b + 1, mask[b]], L_kept, K=tikhonov_operator(L_kept))
        torch.testing.assert_close(X0[b:b + 1], expected)
    # the shared operator on dropped-channel data is a different (wrong) start
    shared = initial_point(Ym, L, K=tikhonov_operator(L))
    assert not torch.allclose(shared[2], X0[2], atol=1e-3)


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


def _chain_neighbours(s, radius):
    idx = torch.arange(s)
    return (idx[:, None] - idx[None, :]).abs() <= radius


def test_strongest_blob_is_the_peak_neighbourhood_above_the_fraction():
    X = torch.zeros(2, 10, 3, dtype=torch.float64)
    X[0, 4] = 2.0  # peak of sample 0
    X[0, 5] = 0.5  # energy 1/16 of the peak: kept at 5 %, not at 10 %
    X[0, 2] = 0.1  # inside the neighbourhood but too weak
    X[0, 8] = 1.0  # strong but two sources too far
    X[1, 9] = 1.0  # sample 1: peak at the end of the chain
    X[1, 8] = -1.0
    neighbours = _chain_neighbours(10, 2)
    mask = strongest_blob(X, neighbours, 0.05)
    assert mask[0].nonzero().flatten().tolist() == [4, 5]
    assert strongest_blob(X, neighbours, 0.1)[0].nonzero().flatten().tolist() == [4]
    assert mask[1].nonzero().flatten().tolist() == [8, 9]


def test_deflation_start_recovers_the_masked_weak_source():
    # a first solution that found only the strong source, and an exact solver of the
    # residual: the start keeps the strong source and adds the weak one, in place
    gen = torch.Generator().manual_seed(3)
    L = torch.randn(16, 10, generator=gen, dtype=torch.float64)  # full column rank
    X_true = torch.zeros(2, 10, 6, dtype=torch.float64)
    X_true[:, 2] = torch.randn(2, 6, generator=gen, dtype=torch.float64) * 3
    X_true[:, 8] = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    Y = L @ X_true
    X_first = torch.zeros_like(X_true)
    X_first[:, 2] = 0.5 * X_true[:, 2]  # right place, wrong scale, weak source missed
    calls = []

    def exact_solve(R, L_):
        calls.append(R)
        return torch.linalg.pinv(L_) @ R

    X0 = deflation_start(Y, L, X_first, exact_solve, _chain_neighbours(10, 1))
    assert len(calls) == 1
    # the residual is orthogonal to the fitted blob's data (least squares)
    P = L @ X_first
    assert ((calls[0] * P).sum((1, 2)).abs() < 1e-10 * P.square().sum((1, 2))).all()
    torch.testing.assert_close(X0.flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64))
    # the weak source is found in place and nothing else outside the blob
    outside = torch.ones(10, dtype=torch.bool)
    outside[1:4] = False
    weak = torch.nn.functional.cosine_similarity(X0[:, 8], X_true[:, 8], dim=-1)
    torch.testing.assert_close(weak, torch.ones(2, dtype=torch.float64))
    others = outside.clone()
    others[8] = False
    assert X0[:, others].abs().max() < 1e-10
    cos = torch.nn.functional.cosine_similarity
    assert (cos(X0.flatten(1), X_true.flatten(1)) > cos(X_first.flatten(1), X_true.flatten(1))
            + 0.01).all()
