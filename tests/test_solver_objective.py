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
from mne_learned_mm.solver.objective import patch_mismatch, time_course_mismatch

N_SENSORS, N_SOURCES, N_TIMES = 6, 12, 5


@pytest.fixture(autouse=True)
def _one_thread():
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems; threads only add contention
    yield
    torch.set_num_threads(n_threads)


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


@pytest.mark.parametrize("odd", [False, True])
def test_grown_prior_computes_the_same_function(odd):
    L, Y, X, prior = _problem(2)
    narrow = ConvAutoencoder(N_SOURCES, 6, 3, 0.1, odd=odd).double()
    narrow.load_state_dict(prior.state_dict())
    wide = ConvAutoencoder(N_SOURCES, 11, 3, 0.1, odd=odd).double()
    fresh = wide.conv1.weight[6:].clone()
    wide.load_narrower_state_dict(narrow.state_dict())
    torch.testing.assert_close(wide(X), narrow(X), rtol=0, atol=1e-13)
    torch.testing.assert_close(lower_cost(X, Y, L, wide), lower_cost(X, Y, L, narrow))
    assert torch.equal(wide.conv1.weight[6:], fresh)  # the new units keep their inputs
    assert not wide.conv3.weight[:, 6:].any()  # and start silent
    # and training reaches them: the output weights of the new units get a gradient
    (1 - cosine_similarity(X, wide(X))).sum().backward()
    assert wide.conv3.weight.grad[:, 6:].abs().sum() > 0
    for bad in (ConvAutoencoder(N_SOURCES, 4, 3, 0.1), ConvAutoencoder(N_SOURCES, 11, 5, 0.1),
                ConvAutoencoder(N_SOURCES + 1, 11, 3, 0.1)):
        with pytest.raises(ValueError, match="Cannot grow"):
            bad.load_narrower_state_dict(narrow.state_dict())


@pytest.mark.parametrize("odd", [False, True])
def test_context_prior_sees_the_whole_window(odd):
    L, Y, X, prior = _problem(4, n_times=12)
    plain = ConvAutoencoder(N_SOURCES, 6, 3, 0.1, odd=odd).double()
    plain.load_state_dict(prior.state_dict())
    ctx = ConvAutoencoder(N_SOURCES, 6, 3, 0.1, odd=odd, context=True).double()
    missing = ctx.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["context.weight"]
    torch.testing.assert_close(ctx(X), plain(X), rtol=0, atol=0)  # Wc = 0 at construction
    with torch.no_grad():
        ctx.context.weight.normal_(generator=torch.Generator().manual_seed(0))
    # three kernel-3 layers see ±3 samples: the last sample cannot reach the first output
    # of the plain network, and reaches it through the window mean with context
    X2 = X.clone()
    X2[..., -1] += 1.0
    torch.testing.assert_close(plain(X2)[..., 0], plain(X)[..., 0], rtol=0, atol=0)
    assert (ctx(X2)[..., 0] - ctx(X)[..., 0]).abs().max() > 1e-3
    # batched samples keep their own windows
    torch.testing.assert_close(ctx(X[:1]), ctx(X)[:1])
    if odd:
        torch.testing.assert_close(ctx(-X), -ctx(X), rtol=0, atol=1e-14)
    Xg = X[:2, :, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: lower_cost(x, Y[:2, :, :4], L, ctx, lam=0.7), (Xg,))
    # growing keeps the context weights; a context Φ does not load into a plain one
    wide = ConvAutoencoder(N_SOURCES, 9, 3, 0.1, odd=odd, context=True).double()
    wide.load_narrower_state_dict(ctx.state_dict())
    torch.testing.assert_close(wide(X), ctx(X), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="context layer"):
        ConvAutoencoder(N_SOURCES, 9, 3, 0.1).load_narrower_state_dict(ctx.state_dict())


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
    loss = upper_loss(X, X_hat, prior)
    assert loss.shape == ()
    weighted = upper_loss(X, X_hat, prior, time_weight=0.5)
    expected = loss + 0.5 * time_course_mismatch(X, X_hat).mean()
    torch.testing.assert_close(weighted, expected)


def test_time_course_mismatch():
    gen = torch.Generator().manual_seed(5)
    X = torch.zeros(2, 7, 9, dtype=torch.float64)
    X[:, :3] = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64)
    # right time courses up to positive per-source factors: no cost
    X_hat = X * torch.rand(2, 7, 1, generator=gen, dtype=torch.float64).add(0.1)
    torch.testing.assert_close(time_course_mismatch(X, X_hat), torch.zeros(2, dtype=torch.float64))
    # energy on silent sources costs half its share of the estimate's energy
    junk = X_hat.clone()
    junk[:, 3:] = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)
    share = (junk[:, 3:] ** 2).sum((1, 2)) / (junk ** 2).sum((1, 2))
    torch.testing.assert_close(time_course_mismatch(X, junk), 0.5 * share)
    # a flipped source costs 2 times its mean share
    flipped = X_hat.clone()
    flipped[0, 1] *= -1
    share = 0.5 * ((X[0, 1] ** 2).sum() / (X[0] ** 2).sum()
                   + (X_hat[0, 1] ** 2).sum() / (X_hat[0] ** 2).sum())
    torch.testing.assert_close(time_course_mismatch(X, flipped)[0], 2 * share)
    # a global scale change is free, a time shift is not
    assert time_course_mismatch(X, 3.0 * X).abs().max() < 1e-12
    assert (time_course_mismatch(X, torch.roll(X, 2, dims=-1)) > 0.05).all()
    junk = junk.requires_grad_()
    assert torch.autograd.gradcheck(lambda b: time_course_mismatch(X, b), (junk,))


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


def test_patch_mismatch_counts_every_patch_the_same():
    gen = torch.Generator().manual_seed(6)
    X = torch.zeros(2, 12, 5, dtype=torch.float64)
    X[0, 0:2] = 5.0 * torch.randn(2, 5, generator=gen, dtype=torch.float64)  # strong patch
    X[0, 7:9] = 0.05 * torch.randn(2, 5, generator=gen, dtype=torch.float64)  # weak patch
    X[1, 4] = torch.randn(5, generator=gen, dtype=torch.float64)  # one patch only
    zones = torch.zeros(2, 2, 12, dtype=torch.bool)  # second row of sample 1 is padding
    zones[0, 0, 0:5], zones[0, 1, 6:12], zones[1, 0, 3:6] = True, True, True
    zero = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(patch_mismatch(X, 3.0 * X, zones), zero)
    missed = X.clone()
    missed[0, 7:9] = 0  # the weak patch is lost: the whole-matrix cosine hardly notices
    assert 1 - cosine_similarity(X, missed)[0] < 1e-3
    torch.testing.assert_close(patch_mismatch(X, missed, zones),
                               torch.tensor([0.5, 0.0], dtype=torch.float64))
    flipped = X.clone()
    flipped[1] *= -1
    torch.testing.assert_close(patch_mismatch(X, flipped, zones)[1],
                               torch.tensor(2.0, dtype=torch.float64))
    X_hat = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: patch_mismatch(X, b, zones), (X_hat,))


def test_upper_loss_patch_term():
    _, _, X, prior = _problem(3, n_batch=2, n_times=3)
    X_hat = torch.randn_like(X)
    zones = torch.zeros(2, 1, X.shape[1], dtype=torch.bool)
    zones[:, 0, :2] = True
    expected = upper_loss(X, X_hat, prior) + 0.7 * patch_mismatch(X, X_hat, zones).mean()
    torch.testing.assert_close(upper_loss(X, X_hat, prior, zones=zones, patch_weight=0.7),
                               expected)
