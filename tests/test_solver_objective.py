"""Tests of the solver's objectives and autoencoder prior (tiny, float64)."""

import math

import pytest
import torch
from torch.func import functional_call

from mne_learned_mm.solver import (
    ConvAutoencoder,
    SoftReLU,
    conv_norm_bound,
    conv_operator_norm,
    cosine_similarity,
    cost_and_grad,
    lower_cost,
    upper_loss,
)

N_SENSORS, N_SOURCES, N_TIMES = 6, 12, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed, n_batch=3, n_times=N_TIMES, hidden=6, kernel_size=3, eps=0.1):
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(N_SENSORS, N_SOURCES, generator=gen, dtype=torch.float64)
    Y = torch.randn(n_batch, N_SENSORS, n_times, generator=gen, dtype=torch.float64)
    X = torch.randn(n_batch, N_SOURCES, n_times, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    prior = ConvAutoencoder(N_SOURCES, hidden, kernel_size, eps).double()
    return L, Y, X, prior


def test_cosine_similarity_matches_flattened_cosine():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 7, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 3, 7, generator=gen, dtype=torch.float64)
    expected = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    torch.testing.assert_close(cosine_similarity(a, b), expected)
    # per sample scale invariance, symmetry, range
    scale = torch.tensor([1e-6, 1.0, 3.0, 1e4], dtype=torch.float64).view(4, 1, 1)
    torch.testing.assert_close(cosine_similarity(scale * a, b), expected)
    torch.testing.assert_close(cosine_similarity(b, a), expected)
    torch.testing.assert_close(cosine_similarity(a, a), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(cosine_similarity(a, -a), -torch.ones(4, dtype=torch.float64))


def test_cosine_similarity_safe_at_zero():
    a = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, dtype=torch.float64)
    cos = cosine_similarity(a, b)
    (grad,) = torch.autograd.grad(cos.sum(), a)
    assert torch.equal(cos, torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(grad).all()


def test_soft_relu_derivative_bounds():
    eps = 0.05
    act = SoftReLU(eps)
    z = torch.linspace(-2, 2, 2001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(act(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    assert (d1 > 0).all() and (d1 < 1).all()
    assert (d2 > 0).all() and d2.max() <= 1 / (2 * eps) * (1 + 1e-12)
    assert d2.max() > 0.99 / (2 * eps)  # attained at z = 0
    torch.testing.assert_close(act(torch.tensor([0.0], dtype=torch.float64)),
                               torch.tensor([eps / 2], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        SoftReLU(0.0)


@pytest.mark.parametrize("n_times", [1, 5, 17])
def test_prior_any_length(n_times):
    L, Y, X, prior = _problem(0, n_times=n_times)
    assert prior(X).shape == X.shape
    assert lower_cost(X, Y, L, prior).shape == (X.shape[0],)


def test_odd_prior_is_odd_and_shares_the_network():
    L, Y, X, prior = _problem(1)
    odd = ConvAutoencoder(N_SOURCES, 6, 3, 0.1, odd=True).double()
    odd.load_state_dict(prior.state_dict())
    torch.testing.assert_close(odd(-X), -odd(X), rtol=0, atol=1e-14)
    torch.testing.assert_close(odd(X), 0.5 * (prior(X) - prior(-X)))
    assert not torch.allclose(prior(-X), -prior(X))  # the plain network is not odd
    # the cost is then even: u(−X; −Y) = u(X; Y) and u(−X; Y) has the prior term of u(X; Y)
    torch.testing.assert_close(lower_cost(-X, -Y, L, odd), lower_cost(X, Y, L, odd))
    X = X.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: lower_cost(x, Y, L, odd, lam=0.7), (X,))


def _conv_matrix(weight, n_times):
    c_in = weight.shape[1]
    eye = torch.eye(c_in * n_times, dtype=weight.dtype).view(-1, c_in, n_times)
    cols = torch.nn.functional.conv1d(eye, weight, padding=weight.shape[-1] // 2)
    return cols.flatten(1).T  # (c_out * T, c_in * T)


@pytest.mark.parametrize("kernel_size,n_times", [(1, 4), (3, 1), (3, 6), (5, 9)])
def test_conv_norms_against_the_linear_map(kernel_size, n_times):
    gen = torch.Generator().manual_seed(kernel_size + n_times)
    weight = torch.randn(5, 4, kernel_size, generator=gen, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(_conv_matrix(weight, n_times), 2).item()
    norm, _ = conv_operator_norm(weight, n_times, n_iter=1000, tol=1e-12)
    assert norm <= exact * (1 + 1e-12)  # power iteration: from below
    assert norm == pytest.approx(exact, rel=1e-3)
    bound, _ = conv_norm_bound(weight)
    assert bound >= exact * (1 - 1e-12)  # certified, for every length
    long = torch.linalg.matrix_norm(_conv_matrix(weight, 100), 2).item()
    assert bound >= long * (1 - 1e-12) and bound == pytest.approx(long, rel=2e-2)
    # the reshaped kernel's norm is a different number
    reshaped = torch.linalg.matrix_norm(weight.reshape(5, -1), 2).item()
    if kernel_size > 1 and n_times > 1:
        assert abs(reshaped - exact) > 1e-3 * exact


def test_conv_norm_bound_gradient():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    _, j = conv_norm_bound(weight)
    assert torch.autograd.gradcheck(
        lambda w: conv_norm_bound(w, differentiable=True, omega_index=j)[0], (weight,))


def test_layer_norms_cached_and_refreshed():
    _, _, _, prior = _problem(1)
    first = prior.layer_norms()
    assert prior.layer_norms() == first
    prior.conv2.weight.data.mul_(2.0)  # .data edits do not bump the version counter
    second = prior.layer_norms()
    assert second[0] == first[0] and second[2] == first[2]
    assert second[1] == pytest.approx(2 * first[1], rel=1e-9)
    assert prior.lipschitz_bound() == pytest.approx(math.prod(second))
    torch.testing.assert_close(prior.lipschitz_bound(differentiable=True).item(),
                               prior.lipschitz_bound())


def test_gradcheck_lower_cost():
    L, Y, X, prior = _problem(2, n_batch=2, n_times=3)
    X = X.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: lower_cost(x, Y, L, prior, lam=0.7), (X,))
    # and with respect to the prior's parameters
    params = dict(prior.named_parameters())

    def cost_of_bias(bias):
        p = dict(params, **{"conv1.bias": bias})
        return lower_cost(X.detach(), Y, L, lambda z: functional_call(prior, p, (z,)))

    bias = prior.conv1.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(cost_of_bias, (bias,))


def test_gradcheck_upper_loss():
    _, _, X, prior = _problem(3, n_batch=2, n_times=3)
    X_hat = torch.randn_like(X).requires_grad_()
    X_true = X.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: upper_loss(a, b, prior), (X_true, X_hat))
    assert upper_loss(X, X_hat, prior).shape == ()


def test_cost_and_grad_batched_and_paths():
    L, Y, X, prior = _problem(4)
    u, g = cost_and_grad(X, Y, L, prior, lam=0.5)
    assert not u.requires_grad and not g.requires_grad
    for b in range(X.shape[0]):  # samples are independent
        ub, gb = cost_and_grad(X[b:b + 1], Y[b:b + 1], L, prior, lam=0.5)
        torch.testing.assert_close(ub, u[b:b + 1])
        torch.testing.assert_close(gb, g[b:b + 1])
    with torch.no_grad():  # inference path works without grad mode
        u2, g2 = cost_and_grad(X, Y, L, prior, lam=0.5)
    torch.testing.assert_close(g2, g)
    u3, g3 = cost_and_grad(X, Y, L, prior, lam=0.5, create_graph=True)
    assert g3.requires_grad  # differentiable with respect to the prior
    torch.testing.assert_close(g3.detach(), g)
    # the data term is invariant to the scale of Y, so is its gradient
    _, g4 = cost_and_grad(X, 1e-5 * Y, L, prior, lam=0.5)
    torch.testing.assert_close(g4, g)
