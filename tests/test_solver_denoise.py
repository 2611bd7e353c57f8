"""Singular-value shrinkage of the data (solver.denoise)."""

import numpy as np
import pytest
import torch

from mne_learned_mm.solver.denoise import (
    MIN_DIMS,
    frobenius_shrinker,
    marchenko_pastur_median,
    noise_level,
    shrink_singular_values,
)


def _low_rank(rng, n, t, rank, batch=1):
    U = torch.linalg.qr(torch.tensor(rng.standard_normal((batch, n, rank))))[0]
    V = torch.linalg.qr(torch.tensor(rng.standard_normal((batch, t, rank))))[0]
    return U, V


@pytest.mark.parametrize("beta", [0.1, 0.35, 0.7, 1.0])
def test_marchenko_pastur_median_matches_random_matrices(beta):
    rng = np.random.default_rng(0)
    t = 1000
    n = int(round(beta * t))
    Z = rng.standard_normal((n, t))
    eig = np.linalg.eigvalsh(Z @ Z.T) / t
    assert marchenko_pastur_median(beta) == pytest.approx(np.median(eig), rel=0.03)


@pytest.mark.parametrize("shape", [(89, 64), (89, 256), (31, 500), (128, 128)])
def test_noise_level_of_white_noise(shape):
    gen = torch.Generator().manual_seed(1)
    sigma = 3.7e-6
    Z = sigma * torch.randn(20, *shape, generator=gen, dtype=torch.float64)
    est = noise_level(torch.linalg.svdvals(Z), *shape)
    assert est.mean().item() == pytest.approx(sigma, rel=0.03)
    assert (est / sigma - 1).abs().max().item() < 0.12


def test_shrinker_keeps_strong_components_and_drops_the_bulk():
    beta = 0.5
    y = torch.linspace(0.1, 20.0, 400, dtype=torch.float64)
    eta = frobenius_shrinker(y, beta)
    edge = 1 + np.sqrt(beta)
    assert (eta[y <= edge] == 0).all()
    assert (eta[y > edge] > 0).all() and (eta <= y).all()
    assert (torch.diff(eta[y > edge]) > 0).all()  # monotone above the edge
    assert eta[-1].item() == pytest.approx(y[-1].item(), rel=0.01)  # strong ones barely shrunk


def test_shrinkage_recovers_a_low_rank_signal():
    rng = np.random.default_rng(2)
    n, t, rank = 89, 128, 3
    U, V = _low_rank(rng, n, t, rank, batch=8)
    S = torch.tensor([[40.0, 25.0, 18.0]], dtype=torch.float64).expand(8, -1)
    X = (U * S[:, None, :]) @ V.transpose(1, 2)
    N = torch.tensor(rng.standard_normal((8, n, t)))
    Y_hat, kept = shrink_singular_values(X + N)
    assert (kept == rank).all()
    err_before = (N.flatten(1).norm(dim=1) / X.flatten(1).norm(dim=1))
    err_after = ((Y_hat - X).flatten(1).norm(dim=1) / X.flatten(1).norm(dim=1))
    assert (err_after < 0.35 * err_before).all()


def test_shrinkage_is_scale_equivariant_and_batchwise():
    rng = np.random.default_rng(3)
    U, V = _low_rank(rng, 40, 100, 2, batch=3)
    X = (U * torch.tensor([30.0, 15.0], dtype=torch.float64)) @ V.transpose(1, 2)
    Y = X + torch.tensor(rng.standard_normal(X.shape))
    a, _ = shrink_singular_values(Y)
    b, _ = shrink_singular_values(1e-7 * Y)
    torch.testing.assert_close(b, 1e-7 * a)
    single, _ = shrink_singular_values(Y[1:2])
    torch.testing.assert_close(single, a[1:2])


def test_average_reference_dimension():
    """Average-referenced data live in n − 1 dimensions: their zero singular value
    is not part of the noise bulk."""
    rng = np.random.default_rng(4)
    n, t = 60, 200
    U, V = _low_rank(rng, n, t, 1)
    X = 20 * U @ V.transpose(1, 2)
    Y = X + torch.tensor(rng.standard_normal((1, n, t)))
    Y = Y - Y.mean(dim=1, keepdim=True)
    S = torch.linalg.svdvals(Y)
    # unit white noise projected on the n − 1 dimensions is unit white noise there
    assert noise_level(S[:, :n - 1], n - 1, t).item() == pytest.approx(1.0, rel=0.1)
    Y_hat, kept = shrink_singular_values(Y, n_dims=n - 1)
    assert kept.item() == 1
    assert Y_hat.sum(dim=1).abs().max().item() < 1e-9  # still average-referenced


def test_pure_noise_or_short_data_are_left_alone():
    gen = torch.Generator().manual_seed(5)
    Y = torch.randn(1, 30, MIN_DIMS - 1, generator=gen, dtype=torch.float64)
    out, kept = shrink_singular_values(Y)
    assert out is Y and kept.item() == 0
    Z = torch.randn(200, 50, 120, generator=gen, dtype=torch.float64)
    out, kept = shrink_singular_values(Z)
    none = kept == 0
    assert none.float().mean().item() > 0.5  # noise alone rarely rises above the bulk
    assert torch.equal(out[none], Z[none])
