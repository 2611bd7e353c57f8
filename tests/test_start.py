"""Patch bank, amortized start network and its training recipe."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from mne_learned_mm._forward import patch_atoms
from mne_learned_mm.pretrained import load_model, source_patches
from mne_learned_mm.simulation import SourceGeometry, make_leadfield
from mne_learned_mm.simulation.bank import BankConfig, PatchBank
from mne_learned_mm.solver.init import fitted_scale, normalise_problem, tikhonov_operator
from mne_learned_mm.solver.start import (
    StartConfig,
    StartNetwork,
    amortized_start,
    canonical_sign,
    choice_noise,
    colored_noise_variance,
    denoise,
    explained_share,
    gavish_donoho_rank,
    half_weight_network,
    noise_share,
    noise_variance,
    patch_pursuit,
    peak_loss,
    pursue_patches,
    rap_music,
    rotate_components,
    select_single_source,
    select_source_set,
    singular_pairs,
    start_loss,
    temporal_components,
    unexplained_share,
    varimax_rotation,
)
from mne_learned_mm.training import start as recipe_mod


@pytest.fixture(scope="module")
def bank(fwd_small):
    return PatchBank.from_forward(fwd_small, orders=(0, 3))


def test_bank_patches_are_the_simulators(bank, fwd_small):
    geo = SourceGeometry.from_forward(fwd_small)
    L = make_leadfield(fwd_small)
    gaussian = np.flatnonzero(bank.orders == 2)[:3]  # the first profile of order 2
    for k in gaussian:
        seed = bank.seeds[k]
        patch = geo.rings(seed, 2)
        expected = np.zeros(geo.n_sources)
        expected[patch] = geo.patch_amplitude(seed, patch)
        x = bank.sources(torch.tensor([[k]]), torch.ones(1, 1))[0].numpy()
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(bank.images[:, k].numpy(), L @ expected, rtol=1e-4,
                                   atol=1e-6 * np.abs(L @ expected).max())
    assert bank.n_patches == geo.n_sources * (1 + 3 * 3)  # order 0 once, 3 profiles


def test_bank_hops_are_ring_distances(bank):
    geo = bank.geometry
    for seed in (0, 57, 200):
        dist = geo.ring_distance(seed)
        near = dist <= 10
        np.testing.assert_array_equal(bank.hops[seed].numpy()[near], dist[near])
        assert (bank.hops[seed].numpy()[~near] > 10).all()


def test_bank_mixtures_follow_the_non_overlap_rule(bank):
    gen = torch.Generator().manual_seed(0)
    config = BankConfig(n_patches=(1, 3), margin=2)
    which, amp = bank.draw_mixtures(gen, 2000, config)
    n_active = (amp != 0).sum(1)
    assert n_active.min() >= 1 and n_active.max() <= 3
    assert (n_active == 3).float().mean() > 0.2  # few patches dropped
    assert torch.all(amp[:, 0] != 0) and torch.all(amp.abs() <= 1)
    seeds = torch.as_tensor(bank.seeds)[which]
    orders = torch.as_tensor(bank.orders)[which]
    for i in range(3):
        for j in range(i + 1, 3):
            both = (amp[:, i] != 0) & (amp[:, j] != 0)
            hops = bank.hops[seeds[both, i], seeds[both, j]].long()
            assert torch.all(hops >= orders[both, i] + orders[both, j] + 2)
    signs = torch.sign(amp[amp != 0])
    assert abs(float(signs.mean())) < 0.1  # random polarities



@pytest.mark.parametrize("draw", ["patch", "order"])
def test_bank_draw_frequencies(bank, draw):
    # orders 0-3, order 0 with one profile and the others with three: drawn
    # uniformly over the patches, order 0 is 1/10 of the first patches; drawn
    # by order, 1/4
    gen = torch.Generator().manual_seed(3)
    which, _ = bank.draw_mixtures(gen, 8000, BankConfig(n_patches=(1, 1), draw=draw))
    share = torch.bincount(torch.as_tensor(bank.orders)[which[:, 0]], minlength=4) / 8000
    expected = [0.1, 0.3, 0.3, 0.3] if draw == "patch" else [0.25] * 4
    np.testing.assert_allclose(share.numpy(), expected, atol=0.02)
    with pytest.raises(ValueError, match='draw must be "patch" or "order"'):
        BankConfig(draw="seed")

@pytest.mark.parametrize("snr_db", [0.0, 20.0])
def test_bank_sample_snr_and_reference(bank, snr_db):
    gen = torch.Generator().manual_seed(1)
    config = BankConfig(snr_db=(snr_db, snr_db), background=(0.0, 0.0))
    y, x = bank.sample(gen, 4000, config)
    clean = x @ bank.L.T
    clean = clean - clean.mean(1, keepdim=True)
    cos = (y * clean).sum(1) / clean.norm(dim=1)
    expected = 1 / np.sqrt(1 + 10 ** (-snr_db / 10))  # noise orthogonal on average
    assert abs(float(cos.mean()) - expected) < 0.02
    np.testing.assert_allclose(y.norm(dim=1).numpy(), 1, rtol=1e-5)
    np.testing.assert_allclose(y.sum(1).numpy(), 0, atol=1e-5)


def test_bank_sample_channel_subset(bank):
    gen = torch.Generator().manual_seed(2)
    keep = torch.zeros(bank.L.shape[0], dtype=torch.bool)
    keep[::3] = True
    y, _ = bank.sample(gen, 64, keep=keep)
    assert torch.all(y[:, ~keep] == 0)
    np.testing.assert_allclose(y[:, keep].sum(1).numpy(), 0, atol=1e-5)


def test_whitener_whitens_on_the_reference_range(bank):
    n = bank.L.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[:5] = False
    P = recipe_mod.reference_projector(keep).double()
    brain = bank.background_factor @ bank.background_factor.T
    C = 0.5 * torch.eye(n) + 0.5 * brain * n / brain.trace()
    W = recipe_mod.whitener(C.double(), P)
    np.testing.assert_allclose((W @ P @ C.double() @ P @ W).numpy(), P.numpy(),
                               atol=1e-8)  # the kept, referenced space is whitened
    assert torch.all(W[:5] == 0) and torch.allclose(W @ keep.double(), torch.zeros(n).double(),
                                                    atol=1e-8)


def test_start_network_is_sign_equivariant():
    torch.manual_seed(0)
    net = StartNetwork(50, StartConfig(hidden=16, depth=2)).double()
    z = torch.randn(7, 50, dtype=torch.float64)
    torch.testing.assert_close(net(-z), -net(z), rtol=0, atol=0)
    torch.testing.assert_close(net(3.0 * z), net(z))  # scale-free input
    assert torch.equal(canonical_sign(torch.tensor([[1.0, -3.0], [0.0, 0.0]])),
                       torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("members", [1, 3])
def test_start_network_ensemble_is_the_members_mean(members):
    torch.manual_seed(5)
    net = StartNetwork(40, StartConfig(hidden=8, depth=1, members=members)).double()
    z = torch.randn(4, 40, dtype=torch.float64)
    alone = []
    for member in net.nets:
        one = StartNetwork(40, StartConfig(hidden=8, depth=1)).double()
        one.nets[0].load_state_dict(member.state_dict())
        alone.append(one(z))
    torch.testing.assert_close(net(z), sum(alone) / members)
    torch.testing.assert_close(net(-z), -net(z), rtol=0, atol=0)
    # one-network weights of the models before ensembles (keys net.*) still load
    legacy = {f"net.{k}": v for k, v in net.nets[0].state_dict().items()}
    one = StartNetwork(40, StartConfig(hidden=8, depth=1)).double()
    one.load_state_dict(legacy)
    torch.testing.assert_close(one(z), alone[0])


def test_start_network_gradcheck():
    torch.manual_seed(1)
    net = StartNetwork(6, StartConfig(hidden=5, depth=1)).double()
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (z,))


def test_residual_pass_is_a_fitted_deflation():
    """x₂ = α x₁ + β f(K r), r = y − α L x₁, both amplitudes least squares; never a worse fit."""
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(2)
    L = torch.randn(12, 50, generator=gen, dtype=torch.float64)
    K = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    net = StartNetwork(50, StartConfig(hidden=16, depth=2, residual_passes=1,
                                       single_source=None)).double()
    y = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    x1 = net(y @ K.T)
    alpha = fitted_scale(y, x1 @ L.T)[:, None]
    r = y - alpha * (x1 @ L.T)
    d = net(r @ K.T)
    x2 = net.patterns(y, L, K)
    torch.testing.assert_close(x2, alpha * x1 + fitted_scale(r, d @ L.T)[:, None] * d)
    torch.testing.assert_close(net.patterns(-y, L, K), -x2)
    misfit = [(y - fitted_scale(y, x @ L.T)[:, None] * (x @ L.T)).norm(dim=1) for x in (x1, x2)]
    assert torch.all(misfit[1] <= misfit[0] + 1e-12) and torch.any(misfit[1] < misfit[0])
    net.config.residual_passes = 0
    torch.testing.assert_close(net.patterns(y, L, K), x1)
    assert torch.equal(fitted_scale(y, torch.zeros_like(y)), torch.zeros(4, dtype=torch.float64))


def test_single_source_replaces_a_pattern_only_where_it_fits_better():
    """The dipole scan's best source, with its least-squares amplitude, where it explains
    ≥ min_share of y and more than the pattern, and the pattern adds little beside it;
    odd in y; exact for one source."""
    gen = torch.Generator().manual_seed(4)
    L = torch.randn(12, 50, generator=gen, dtype=torch.float64)
    focal = 2.5 * L[:, 7] + 1e-3 * torch.randn(12, generator=gen, dtype=torch.float64)
    spread = torch.randn(50, generator=gen, dtype=torch.float64)
    y = torch.stack([focal, L @ spread])  # one source, then an extended pattern's image
    blur = torch.zeros(50, dtype=torch.float64)
    blur[[6, 7, 8]] = 1.0  # the network's blurred guess for the focal source
    x = torch.stack([blur, spread])
    out = select_single_source(x, y, L, 0.95)
    assert out[0].nonzero().flatten().tolist() == [7]
    torch.testing.assert_close(out[0, 7], (focal @ L[:, 7]) / L[:, 7].square().sum())
    torch.testing.assert_close(out[1], spread)  # its own image explains it fully: kept
    torch.testing.assert_close(select_single_source(-x, -y, L, 0.95), -out)
    # the share is the squared cosine; a higher bar than any source reaches keeps x
    share = explained_share(y, x @ L.T)
    torch.testing.assert_close(share, torch.nn.functional.cosine_similarity(
        y, x @ L.T).square())
    assert float(share[1]) == pytest.approx(1.0)
    best = ((y @ L) / L.norm(dim=0)).square().max(1).values / y.square().sum(1)
    assert float(best[0]) < 1.0
    torch.testing.assert_close(select_single_source(x, y, L, float(best[0]) + 1e-9), x)
    # nested test: where the pattern explains what the single source leaves out, it stays
    two = 3.0 * L[:, 7] + L[:, 30]
    weak = torch.zeros(1, 50, dtype=torch.float64)
    weak[0, 30] = 1.0
    assert float(explained_share(two[None], weak @ L.T)) < 0.5
    torch.testing.assert_close(select_single_source(weak, two[None], L, 0.5), weak)
    assert select_single_source(weak, two[None], L, 0.5, max_pattern_gain=1.0)[0, 7] != 0
    # through the network: the pattern of a single source's topography is that source
    net = StartNetwork(50, StartConfig(hidden=16, depth=2)).double()
    K = torch.randn(50, 12, generator=gen, dtype=torch.float64)
    assert net.patterns(L[:, 30:31].T, L, K).nonzero().tolist() == [[0, 30]]
    with pytest.raises(ValueError, match="single_source must be in"):
        StartConfig(single_source=0.0)


def test_rap_music_finds_mixed_sources():
    """Noise-free sources mixed into any basis of their span are found, whatever the basis."""
    gen = torch.Generator().manual_seed(5)
    L = torch.randn(12, 50, generator=gen, dtype=torch.float64)
    truth = [[7, 30, 41], [2, 19, 33]]
    mix = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    C = L.T[torch.tensor(truth)].transpose(1, 2) @ mix  # each component mixes all three
    for basis in (C, C @ torch.linalg.qr(torch.randn(3, 3, generator=gen,
                                                     dtype=torch.float64))[0]):
        found = rap_music(basis, L, 3)
        assert [sorted(q) for q in found.tolist()] == truth
    assert rap_music(C, L, 1).shape == (2, 1)


def _one_hot_columns(F):
    """Sources of unit one-hot columns, or None for other patterns."""
    nz = F.transpose(0, 1).ne(0)
    if not (bool((nz.sum(1) == 1).all()) and bool((F.abs().sum(0) == 1).all())):
        return None
    return sorted(int(q) for q in nz.float().argmax(1))


def test_source_set_replaces_patterns_only_where_they_fit_better():
    """r single sources replace a window's r patterns where they explain ≥ min_share of its
    components and more than the patterns, and the patterns add little beside them."""
    gen = torch.Generator().manual_seed(6)
    L = torch.randn(12, 50, generator=gen, dtype=torch.float64)
    focal = L[:, [7, 30]] @ torch.randn(2, 2, generator=gen, dtype=torch.float64)
    spread = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    blur = torch.zeros(50, 2, dtype=torch.float64)
    blur[[6, 7, 8], 0] = blur[[29, 30, 31], 1] = 1.0  # the network's blurred guesses
    one = torch.zeros(12, 2, dtype=torch.float64)
    one[:, 0] = L[:, 3]
    comps = torch.stack([focal, L @ spread, one])
    F = torch.stack([blur, spread, blur])
    keep = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    out = select_source_set(F, comps, keep, L, 0.98)
    assert _one_hot_columns(out[0]) == [7, 30]
    torch.testing.assert_close(out[1], spread)  # its own images explain it fully: kept
    torch.testing.assert_close(out[2], blur)  # one component: select_single_source's
    torch.testing.assert_close(select_source_set(F, -comps, keep, L, 0.98), out)
    # noise a bar of 0.999 does not let through keeps the patterns
    noisy = comps + 0.05 * focal.norm() * torch.randn(comps.shape, generator=gen,
                                                      dtype=torch.float64)
    torch.testing.assert_close(select_source_set(F, noisy, keep, L, 0.999), F)
    assert _one_hot_columns(select_source_set(F, noisy, keep, L, 0.9)[0]) == [7, 30]
    # nested test: where the patterns explain what the sources leave out, they stay
    three = torch.stack([L[:, 7] + 0.4 * L[:, 19], L[:, 30]], 1)[None]  # rank 2, 3 sources
    weak = torch.zeros(1, 50, 2, dtype=torch.float64)
    weak[0, 19, 0] = weak[0, 30, 1] = 1.0
    res = [float(unexplained_share(three, L[:, [q, 30]][None])) for q in (7, 19)]
    assert res[1] > res[0] > 0  # the sources out-explain the patterns, not fully
    torch.testing.assert_close(select_source_set(weak, three, keep[:1], L, 0.5), weak)
    assert _one_hot_columns(select_source_set(weak, three, keep[:1], L, 0.5,
                                              max_pattern_gain=1.0)[0]) == [7, 30]
    with pytest.raises(ValueError, match="source_set must be in"):
        StartConfig(source_set=1.5)


def _noisy_sources(gen, L, sources, sigma, n_batch, n_times=60):
    """Average-referenced windows of unit sources with Gaussian bumps, plus white noise."""
    waves = _bumps(n_times, torch.linspace(20, 40, len(sources)).tolist(), 6.0)
    clean = L[:, sources] @ waves
    noise = sigma * torch.randn(n_batch, L.shape[0], n_times, generator=gen,
                                dtype=torch.float64)
    Y = clean + noise
    return Y - Y.mean(1, keepdim=True)


@pytest.mark.parametrize("sources", [[7], [7, 30]])
def test_noise_variance_and_share_match_white_noise(sources):
    """The variance left beside the kept components is the noise's, and the share of the
    components off the true sources' images is the one noise_share predicts."""
    gen = torch.Generator().manual_seed(3)
    L = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    L = L - L.mean(0)  # an average reference: 29 dimensions
    net = StartNetwork(50, StartConfig(hidden=8, depth=1)).double()
    net.patches = torch.eye(50, dtype=torch.float64).to_sparse()
    n_dims = net.sensor_dims(L)
    assert n_dims == 29
    sigma = 0.4
    Y = _noisy_sources(gen, L, sources, sigma, 200)
    comps, Vh, keep = temporal_components(Y, 4)
    assert bool((keep.sum(1) == len(sources)).all())
    variance = noise_variance(Y, comps @ Vh, keep, n_dims)
    assert abs(float(variance.mean()) / sigma ** 2 - 1) < 0.02  # per dimension of the 29
    C = comps[:, :, :len(sources)]
    ratio = unexplained_share(C, L[:, sources][None]) / noise_share(C, variance, n_dims)
    assert 0.9 < float(ratio.median()) < 1.3
    assert float(noise_share(C, variance, n_dims).median()) > 0.01  # noise matters here
    more = L[:, sources + [44]][None]  # one image more: the noise loses one more dimension
    ratio = unexplained_share(C, more) / noise_share(C, variance, n_dims, len(sources) + 1)
    assert 0.9 < float(ratio.median()) < 1.3


def _ar1_noise(gen, shape, phi):
    """Noise that is white across channels and AR(1) in time, unit innovations."""
    e = torch.randn(*shape, generator=gen, dtype=torch.float64)
    out = torch.empty_like(e)
    out[..., 0] = e[..., 0] / np.sqrt(1 - phi ** 2)  # stationary from the start
    for t in range(1, shape[-1]):
        out[..., t] = phi * out[..., t - 1] + e[..., t]
    return out


def _slow_source(gen, L, n_batch, n_times, amplitude):
    """One source (column 7) with a slow time course, and that course (unit norm)."""
    t = torch.arange(n_times, dtype=torch.float64)
    v = torch.sin(2 * np.pi * t / n_times) * torch.hann_window(n_times, dtype=torch.float64)
    v = v / v.norm()
    return amplitude * L[:, 7][None, :, None] * v[None, None].expand(n_batch, 1, -1), v


def test_colored_noise_variance_is_the_variance_along_a_time_course():
    """For noise that is AR(1) in time, the variance along a slow component's time course
    is vᵀ Γ v (many times the white level); for white noise it is the white level."""
    gen = torch.Generator().manual_seed(5)
    L = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    L = L - L.mean(0)
    phi, n_times = 0.9, 400
    clean, v = _slow_source(gen, L, 8, n_times, 60.0)
    for noise, truth in [
        (_ar1_noise(gen, (8, 30, n_times), phi),
         float(v @ (phi ** (torch.arange(n_times)[:, None] - torch.arange(n_times)).abs()
                    .double() / (1 - phi ** 2)) @ v)),
        (torch.randn(8, 30, n_times, generator=gen, dtype=torch.float64), 1.0)]:
        Y = clean + noise
        Y = Y - Y.mean(1, keepdim=True)
        comps, Vh, keep = temporal_components(Y, 1)
        Y_r = comps @ Vh
        colored = colored_noise_variance(Y, Y_r, Vh, keep, 29)[:, 0]
        # a little low: the kept direction takes its share of the slow noise from R
        assert 0.7 < float((colored / truth).median()) < 1.1, (colored, truth)
    white = noise_variance(Y, Y_r, keep, 29)
    assert 0.9 < float(white.median()) < 1.1
    assert truth < 2 < float(v @ (phi ** (torch.arange(n_times)[:, None]  # the AR(1) case
                                          - torch.arange(n_times)).abs().double()
                                  / (1 - phi ** 2)) @ v) / (1 / (1 - phi ** 2))


def test_choice_noise_counts_the_source_like_components():
    """Under noise that is slow in time the Gavish-Donoho rank counts noise components;
    the choices fit the one a source explains, with the noise along its time course, in
    long windows and in short ones. Under
    white noise they fit the kept components with the white level; and the start stays
    odd in the data."""
    gen = torch.Generator().manual_seed(6)
    L = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    L = L - L.mean(0)
    net = StartNetwork(50, StartConfig(hidden=8, depth=1)).double()
    net.patches = torch.eye(50, dtype=torch.float64).to_sparse()
    images = (net.patch_images(L), net.image_norms(L))
    clean, _ = _slow_source(gen, L, 8, 400, 60.0)
    Y = clean + _ar1_noise(gen, (8, 30, 400), 0.97)
    Y = Y - Y.mean(1, keepdim=True)
    comps, Vh, keep = temporal_components(Y, 6, 0.9)
    assert float(keep.sum(1).min()) >= 2  # the slow noise passes the threshold
    keep_c, variance = choice_noise(Y, comps, Vh, keep, images, 29, net.config)
    assert keep_c.sum(1).tolist() == [1.0] * 8
    white = noise_variance(Y, comps @ Vh, keep, 29)
    assert bool((variance[:, 0] > 3 * white).all()) and bool((variance[:, 1:] == 0).all())
    torch.testing.assert_close(amortized_start(-Y, L, net), -amortized_start(Y, L, net))
    # a short window: the kept components hold the slow noise, whose color then shows
    # beside the source-like components only
    short, _ = _slow_source(gen, L, 8, 64, 15.0)
    short = short + _ar1_noise(gen, (8, 30, 64), 0.9)
    short = short - short.mean(1, keepdim=True)
    comps, Vh, keep = temporal_components(short, 6, 0.9)
    Y_r = comps @ Vh
    white = noise_variance(short, Y_r, keep, 29)
    assert bool((colored_noise_variance(short, Y_r, Vh, keep, 29)[:, 0] < 1.3 * white).all())
    keep_c, variance = choice_noise(short, comps, Vh, keep, images, 29, net.config)
    assert bool((keep_c.sum(1) < keep.sum(1)).all())
    assert bool((variance[:, 0] > 1.3 * white).all())
    Y = clean + torch.randn(8, 30, 400, generator=gen, dtype=torch.float64)
    Y = Y - Y.mean(1, keepdim=True)
    comps, Vh, keep = temporal_components(Y, 6, 0.9)
    keep_c, variance = choice_noise(Y, comps, Vh, keep, images, 29, net.config)
    torch.testing.assert_close(keep_c, keep)
    torch.testing.assert_close(variance, noise_variance(Y, comps @ Vh, keep, 29)[:, None]
                               * keep)
    with pytest.raises(ValueError, match="colored_noise must be"):
        StartConfig(colored_noise=0.0)
    with pytest.raises(ValueError, match="rank_share must be"):
        StartConfig(rank_share=1.5)


def test_patch_set_bar_leaves_the_noise_out():
    """At a low SNR a fixed bar keeps the network's blurred pattern; with the noise's
    share allowed, the true source replaces it, and never where the noise is pure."""
    gen = torch.Generator().manual_seed(4)
    L = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    L = L - L.mean(0)
    Y = _noisy_sources(gen, L, [7], 0.4, 20)
    comps, Vh, keep = temporal_components(Y, 4)
    F = torch.zeros(20, 50, 4, dtype=torch.float64)
    F[:, [6, 7, 8], 0] = 1.0  # the network's blurred guess
    noise = (1.5 * noise_variance(Y, comps @ Vh, keep, 29), 29)
    fixed = select_source_set(F, comps, keep, L, 0.995, min_rank=1)
    assert bool((fixed == F).all())
    chosen = select_source_set(F, comps, keep, L, 0.995, min_rank=1, noise=noise)
    assert [_one_hot_columns(x[:, :1]) for x in chosen] == [[7]] * 20
    pure = _noisy_sources(gen, L, [7], 0.4, 20) - _noisy_sources(
        torch.Generator().manual_seed(9), L, [7], 0.0, 1)
    comps, Vh, keep = temporal_components(pure, 4)
    noise = (1.5 * noise_variance(pure, comps @ Vh, keep, 29), 29)
    F = torch.randn(20, 50, 4, generator=gen, dtype=torch.float64) * keep[:, None]
    torch.testing.assert_close(select_source_set(F, comps, keep, L, 0.995, min_rank=1,
                                                 noise=noise), F)
    with pytest.raises(ValueError, match="noise_margin must be"):
        StartConfig(noise_margin=-1.0)


def test_patch_pursuit_finds_the_best_pair():
    """Started from every column, the pursuit's pair is the best of all pairs (the greedy
    partner of each column is its best one); its re-picks never leave more than the
    greedy picks; it finds two columns in one component, which RAP-MUSIC cannot."""
    gen = torch.Generator().manual_seed(5)
    D = torch.randn(12, 25, generator=gen, dtype=torch.float64)
    C = (D[:, [3, 17]] @ torch.tensor([[1.0], [0.5]], dtype=torch.float64))[None]
    C = C + 0.05 * torch.randn(1, 12, 1, generator=gen, dtype=torch.float64)
    pairs = [(i, j) for i in range(25) for j in range(i + 1, 25)]
    res = torch.stack([unexplained_share(C, D[:, list(q)][None]) for q in pairs])[:, 0]
    best = pairs[int(res.argmin())]
    assert set(best) == {3, 17}
    Q = patch_pursuit(C, D, 2, n_starts=25, n_pool=25)
    assert sorted(Q[0].tolist()) == list(best)
    Cs = torch.randn(40, 12, 2, generator=gen, dtype=torch.float64)
    for n_found in (2, 3):
        greedy = patch_pursuit(Cs, D, n_found, n_starts=1, n_sweeps=0)
        swept = patch_pursuit(Cs, D, n_found, n_starts=1)
        assert bool((swept.sort(1).values.diff(1) > 0).all())  # distinct columns
        fit = [unexplained_share(Cs, D.T[q].transpose(1, 2)) for q in (greedy, swept)]
        assert bool((fit[1] <= fit[0] + 1e-12).all()) and bool((fit[1] < fit[0]).any())
    assert rap_music(C, D, 1).shape == (1, 1)  # one component: one source at most
    assert patch_pursuit(C, D, 1)[0].tolist() == [int(
        (D.T @ C[0, :, 0]).square().div(D.square().sum(0)).argmax())]


def test_joint_fit_is_the_least_squares_fit_whatever_the_scale():
    """The pursuit's joint fit: the least-squares fit of C; near-collinear columns share
    the weight the same way whatever their scale (the patterns do not depend on it)."""
    from mne_learned_mm.solver.start import _joint_fit

    gen = torch.Generator().manual_seed(8)
    L = torch.randn(20, 40, generator=gen, dtype=torch.float64)
    basis = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    basis[:, 2] = basis[:, 0] + 1e-9 * torch.randn(40, generator=gen, dtype=torch.float64)
    C = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    B = _joint_fit(L @ basis, C)
    fitted = L @ basis @ B
    exact = L @ basis[:, :2] @ torch.linalg.lstsq(L @ basis[:, :2], C).solution
    torch.testing.assert_close(fitted, exact)
    scaled = basis * torch.tensor([1e4, 1.0, 1e-4], dtype=torch.float64)
    torch.testing.assert_close(scaled @ _joint_fit(L @ scaled, C), basis @ B)


def test_pursuit_takes_patches_sharing_a_component(fwd_small):
    """Two dictionary patches with the same time course make one component: neither the
    network nor the patch set (one patch for one component) can take them, the pursuit
    does, X0 on their sources (a random network's patterns, unlike them, get the weight of
    the noise they leave); X0(−Y) = −X0(Y); pure noise is never taken."""
    geo = SourceGeometry.from_forward(fwd_small)
    config = {"recipe": {"profiles": ["gaussian", "wide"]}}
    patches = source_patches(fwd_small, config, (0, 3)).double()
    dense = patches.to_dense()
    L = torch.as_tensor(make_leadfield(fwd_small))
    L = L - L.mean(0)
    n = geo.n_sources
    which = [n + 270, n + 193]  # two order-1 patches, one in each hemisphere
    t = torch.linspace(0, 1, 60, dtype=torch.float64)
    wave = torch.exp(-((t - 0.5) / 0.15) ** 2)
    X = dense[which].T @ torch.tensor([[1.0], [0.4]], dtype=torch.float64) @ wave[None]
    gen = torch.Generator().manual_seed(6)
    clean = L @ X
    Y = clean + 0.02 * clean.std() * torch.randn(4, *clean.shape, generator=gen,
                                                 dtype=torch.float64)
    Y = Y - Y.mean(1, keepdim=True)
    torch.manual_seed(0)
    net = StartNetwork(n, StartConfig(hidden=16, depth=1, residual_passes=0)).double()
    net.patches = patches
    support = X.abs().amax(1) > 0

    def on_support(X0):  # share of each estimate's energy on the two patches
        return X0[:, support].square().sum((1, 2)) / X0.square().sum((1, 2))

    X0 = amortized_start(Y, L, net)  # a random network's patterns are unlike them
    assert bool((on_support(X0) > 0.999).all())
    torch.testing.assert_close(X0 / X0.norm(dim=(1, 2), keepdim=True),
                               (X / X.norm())[None].expand_as(X0), atol=0.02, rtol=0)
    torch.testing.assert_close(amortized_start(-Y, L, net), -X0)
    net.config.patch_pursuit = None
    assert bool((on_support(amortized_start(Y, L, net)) < 0.5).all())
    # pure noise: the kept components are noise, no patches explain them within its share
    noise = torch.randn(20, L.shape[0], 60, generator=gen, dtype=torch.float64)
    noise = noise - noise.mean(1, keepdim=True)
    comps, Vh, keep = temporal_components(noise, 4, threshold=0.5)
    assert bool((keep.sum(1) > 0).all())
    n_dims = net.sensor_dims(L)
    F = torch.randn(20, n, 4, generator=gen, dtype=torch.float64) * keep[:, None]
    out = pursue_patches(F, comps, keep, L, patches, (net.patch_images(L), net.image_norms(L)),
                         (noise_variance(noise, comps @ Vh, keep, n_dims), n_dims),
                         free=torch.ones(20, dtype=torch.bool), extra=1, margin=1.5)
    torch.testing.assert_close(out, F)
    for bad in ({"patch_pursuit": -1}, {"patch_pursuit": 1, "noise_margin": 0.0}):
        with pytest.raises(ValueError, match="patch_pursuit must be"):
            StartConfig(**bad)
    assert StartConfig(patch_pursuit=None, noise_margin=0.0).patch_pursuit is None


def test_amortized_start_finds_sources_active_together(fwd_small):
    """Noise-free focal sources with overlapping time courses: each component mixes them,
    the source set finds them exactly; X0(−Y) = −X0(Y)."""
    L = torch.as_tensor(make_leadfield(fwd_small))
    L = L - L.mean(0)
    t = torch.linspace(0, 1, 40, dtype=torch.float64)
    waves = torch.stack([torch.exp(-((t - c) / 0.15) ** 2) for c in (0.4, 0.55, 0.6)])
    X = torch.zeros(L.shape[1], 40, dtype=torch.float64)
    sources = [11, 150, 240]
    X[sources] = waves * torch.tensor([[1.0], [-0.7], [0.8]], dtype=torch.float64)
    Y = (L @ X)[None]
    torch.manual_seed(0)
    net = StartNetwork(L.shape[1], StartConfig(hidden=16, depth=1)).double()
    X0 = amortized_start(Y, L, net)[0]
    assert sorted(torch.nonzero(X0.abs().amax(1) > 1e-9).flatten().tolist()) == sources
    torch.testing.assert_close(X0, X, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(amortized_start(-Y, L, net)[0], -X0)
    net.config.source_set = None
    assert len(torch.nonzero(amortized_start(Y, L, net)[0].abs().amax(1) > 1e-9)) > 3


def test_patch_atoms_are_the_rings_and_profiles(fwd_small):
    """Row k of patch_atoms: the seed's rings of its order, weighted by its profile."""
    geo = SourceGeometry.from_forward(fwd_small)
    atoms, seeds, orders = patch_atoms(geo.pos, geo.adjacency, (0, 3), ("gaussian", "wide"))
    n = geo.n_sources
    assert atoms.shape == (n * (1 + 3 * 2), n)
    np.testing.assert_array_equal(np.bincount(orders), [n, 2 * n, 2 * n, 2 * n])
    for k in (5, n + 17, 3 * n + 40, 6 * n + 100):  # order 0, 1 gaussian, 2 gaussian, 3 wide
        row = atoms.getrow(k)
        patch = geo.rings(seeds[k], orders[k])
        np.testing.assert_array_equal(row.indices, patch)
        dist = np.linalg.norm(geo.pos[patch] - geo.pos[seeds[k]], axis=1)
        sigma = dist.max() / (1 if k >= 6 * n else 2)
        expected = np.exp(-0.5 * (dist / sigma) ** 2) if sigma > 0 else np.ones(1)
        np.testing.assert_allclose(row.data, expected, rtol=1e-12)
    gaussian = slice(n, 2 * n)  # order 1, the simulators' profile
    k = 30
    np.testing.assert_allclose(atoms[gaussian][k].data,
                               geo.patch_amplitude(k, geo.rings(k, 1)), rtol=1e-12)


def test_patch_set_finds_patches_active_together(fwd_small):
    """Two noise-free patches of the dictionary, mixed in both components: the patch set
    finds them exactly, X0 = X; without patches (or with patch_set=None) it does not."""
    geo = SourceGeometry.from_forward(fwd_small)
    config = {"recipe": {"profiles": ["gaussian", "wide"]}}
    patches = source_patches(fwd_small, config, (0, 3)).double()
    dense = patches.to_dense()
    larger = source_patches(fwd_small, config, StartConfig().patch_orders)  # 0-7
    assert larger.shape[0] == geo.n_sources * (1 + 2 * 7)
    torch.testing.assert_close(larger.to_dense()[:len(dense)], dense.float())
    with pytest.raises(ValueError, match="patch_orders must be"):
        StartConfig(patch_orders=(3, 1))
    assert StartConfig(patch_orders=[0, 6]).patch_orders == (0, 6)  # as read from JSON
    L = torch.as_tensor(make_leadfield(fwd_small))
    L = L - L.mean(0)
    n = geo.n_sources
    which = [n + 20, 4 * n + 200]  # order 1 and order 2 (wide) patches, far apart
    assert geo.ring_distance(20, [200])[0] > 6
    t = torch.linspace(0, 1, 40, dtype=torch.float64)
    waves = torch.stack([torch.exp(-((t - c) / 0.15) ** 2) for c in (0.45, 0.55)])
    X = dense[which].T @ (waves * torch.tensor([[1.0], [-0.6]], dtype=torch.float64))
    Y = (L @ X)[None]
    torch.manual_seed(0)
    net = StartNetwork(n, StartConfig(hidden=16, depth=1)).double()
    net.patches = patches
    X0 = amortized_start(Y, L, net)[0]
    torch.testing.assert_close(X0, X, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(amortized_start(-Y, L, net)[0], -X0)
    torch.testing.assert_close(net.patch_images(L), L @ dense.T)
    for off in ({"patch_set": None}, {"patches": None}):
        other = StartNetwork(n, StartConfig(hidden=16, depth=1)).double()
        other.load_state_dict(net.state_dict())
        other.patches = patches
        for key, value in off.items():
            setattr(other.config if key == "patch_set" else other, key, value)
        assert not torch.allclose(amortized_start(Y, L, other)[0], X, atol=1e-3)


def test_load_model_start_overrides(fwd_default):
    L = torch.as_tensor(make_leadfield(fwd_default), dtype=torch.float32)
    Y = torch.randn(1, L.shape[0], 32, generator=torch.Generator().manual_seed(0))
    Y = Y - Y.mean(1, keepdim=True)
    pipe, config = load_model(n_iter=0)
    assert pipe.start_network.config.residual_passes == config["start"]["residual_passes"] == 1
    none, _ = load_model(n_iter=0, start={"residual_passes": 0, "max_rank": 2})
    assert none.start_network.config.max_rank == 2
    assert not torch.allclose(pipe.solve(Y, L)[0], none.solve(Y, L)[0])
    assert config["start"]["rotation"] == pipe.start_network.config.rotation == "varimax"
    unrotated, _ = load_model(n_iter=0, start={"rotation": "none"})  # bank-v4
    assert unrotated.start_network.config.rotation == "none"
    with pytest.raises(ValueError, match="rotation must be one of"):
        load_model(n_iter=0, start={"rotation": "oblique"})
    with pytest.raises(ValueError, match="max_rank, residual_passes, rotation, single_source, "
                                         "rank_threshold, source_set, patch_set, "
                                         "noise_margin, patch_orders, patch_pursuit"):
        load_model(n_iter=0, start={"hidden": 8})
    plain, _ = load_model(n_iter=0, start={"single_source": "none"})
    assert plain.start_network.config.single_source is None
    assert pipe.start_network.config.single_source == 0.95
    assert pipe.start_network.config.source_set == 0.98
    assert pipe.start_network.config.patch_set == 0.995 and pipe.start_network.patches is None
    assert pipe.start_network.config.noise_margin == 1.5
    fixed, _ = load_model(n_iter=0, start={"noise_margin": "0", "patch_pursuit": "none"})
    assert fixed.start_network.config.patch_pursuit is None
    assert pipe.start_network.config.patch_pursuit == 1
    assert fixed.start_network.config.noise_margin == 0.0
    assert pipe.start_network.config.patch_orders == (0, 7)
    bank_only, _ = load_model(n_iter=0, start={"patch_orders": "0-5"})
    assert bank_only.start_network.config.patch_orders == (0, 5)
    no_patches, _ = load_model(n_iter=0, start={"patch_set": "none"})
    assert no_patches.start_network.config.patch_set is None
    no_set, _ = load_model(n_iter=0, start={"source_set": "none"})
    assert no_set.start_network.config.source_set is None
    gd, _ = load_model(n_iter=0, start={"rank_threshold": "1"})
    assert gd.start_network.config.rank_threshold == 1.0
    assert pipe.start_network.config.rank_threshold == 0.9
    white, _ = load_model(n_iter=0, start={"colored_noise": "none", "rank_share": "0.5"})
    assert white.start_network.config.colored_noise is None
    assert white.start_network.config.rank_share == 0.5
    assert (pipe.start_network.config.colored_noise, pipe.start_network.config.rank_share) \
        == (1.3, 0.4)


def test_gavish_donoho_rank_finds_the_signal_rank():
    gen = torch.Generator().manual_seed(3)
    n, t = 60, 200
    U = torch.linalg.qr(torch.randn(n, 2, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(t, 2, generator=gen, dtype=torch.float64))[0]
    signal = U @ torch.diag(torch.tensor([80.0, 50.0], dtype=torch.float64)) @ V.T
    Y = signal + torch.randn(n, t, generator=gen, dtype=torch.float64)
    S = torch.linalg.svdvals(Y)[None]
    assert int(gavish_donoho_rank(S, (n, t), 5)[0]) == 2
    assert int(gavish_donoho_rank(S, (n, t), 1)[0]) == 1
    Y_r, rank = denoise(Y[None], 5)
    assert int(rank[0]) == 2
    assert torch.linalg.norm(Y_r[0] - signal) < 0.5 * torch.linalg.norm(Y - signal)
    # the threshold's scale: τ = scale · ω(β) · median(σ); the next singular value of the
    # noise, just under τ, is kept once the scale brings τ below it
    beta = n / t
    tau = (0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43) * S[0].median()
    scale = float(S[0, 2] / tau) * 0.999
    assert scale < 1
    assert int(gavish_donoho_rank(S, (n, t), 5, scale)[0]) == 3
    assert int(denoise(Y[None], 5, scale)[1][0]) == 3
    with pytest.raises(ValueError, match="rank_threshold must be positive"):
        StartConfig(rank_threshold=0.0)


@pytest.mark.parametrize("shape", [(2, 30, 50), (2, 30, 7)])
def test_temporal_components_match_the_svd(shape):
    """The Gram eigendecomposition gives the SVD's values and rank-r projection."""
    gen = torch.Generator().manual_seed(5)
    Y = torch.randn(*shape, generator=gen, dtype=torch.float64)
    Y = Y + 10 * torch.randn(shape[0], shape[1], 1, generator=gen, dtype=torch.float64) @ \
        torch.randn(shape[0], 1, shape[2], generator=gen, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    S2, _ = singular_pairs(Y)
    torch.testing.assert_close(S2, S, rtol=1e-10, atol=1e-10)
    comps, Vh2, keep = temporal_components(Y, 3)
    r = keep.sum(1).long()
    for b in range(shape[0]):
        k = int(r[b])
        torch.testing.assert_close(comps[b] @ Vh2[b], (U[b, :, :k] * S[b, :k]) @ Vh[b, :k],
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(Vh2[b, :k] @ Vh2[b, :k].T,
                                   torch.eye(k, dtype=torch.float64))


def _bumps(t, centres, width):
    time = torch.arange(t, dtype=torch.float64)
    return torch.stack([torch.exp(-0.5 * ((time - c) / width) ** 2) for c in centres])


def test_varimax_unmixes_sources_active_at_different_latencies():
    """The SVD mixes two sources with overlapping bumps; the rotation separates them."""
    gen = torch.Generator().manual_seed(11)
    n, t = 40, 120
    topo = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    topo[:, 1] += topo[:, 0]  # correlated topographies, as neighbouring sources
    waves = _bumps(t, (40, 75), 8.0) * torch.tensor([[1.0], [0.7]], dtype=torch.float64)
    Y = (topo @ waves)[None]
    comps, Vh, keep = temporal_components(Y, 2)
    assert keep.sum() == 2
    rc, rV = rotate_components(comps, Vh, keep)
    torch.testing.assert_close(rc @ rV, comps @ Vh)  # the data are unchanged
    torch.testing.assert_close(rV[0] @ rV[0].T, torch.eye(2, dtype=torch.float64))

    def match(C):  # |cos| of each component's topography with its best source
        c = (C[0].T @ topo) / (C[0].norm(dim=0)[:, None] * topo.norm(dim=0)[None])
        return c.abs().amax(1)
    assert bool((match(rc) > 0.97).all())
    assert float(match(comps).min()) < 0.9  # the SVD alone does not separate them
    R = varimax_rotation(Vh.transpose(1, 2))
    torch.testing.assert_close(R[0] @ R[0].T, torch.eye(2, dtype=torch.float64))
    D = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(varimax_rotation(Vh.transpose(1, 2) @ D)[0], D @ R[0] @ D)


def test_start_config_rejects_an_unknown_rotation():
    with pytest.raises(ValueError, match="rotation must be one of"):
        StartConfig(rotation="promax")


@pytest.mark.parametrize("rotation", ["none", "varimax"])
def test_amortized_start_sign_equivariant_and_least_squares(fwd_small, rotation):
    torch.manual_seed(2)
    L = torch.as_tensor(make_leadfield(fwd_small), dtype=torch.float64)
    net = StartNetwork(L.shape[1], StartConfig(hidden=16, depth=1, max_rank=2,
                                               rotation=rotation)).double()
    Y = torch.randn(3, L.shape[0], 20, dtype=torch.float64)
    Y = Y - Y.mean(1, keepdim=True)
    Yn, Ln = normalise_problem(Y, L)
    X0 = amortized_start(Yn, Ln, net)
    assert X0.shape == (3, L.shape[1], 20)
    torch.testing.assert_close(amortized_start(-Yn, Ln, net), -X0)
    # each time sample's amplitude is the least-squares one: residual ⟂ L x_t
    Y_r, _ = denoise(Yn, 2, net.config.rank_threshold)
    resid = Y_r - Ln @ X0
    torch.testing.assert_close(((Ln @ X0) * resid).sum(1), torch.zeros(3, 20,
                                                                      dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_start_loss():
    x = torch.tensor([[0.0, 1.0, 2.0, 0.0]])
    assert float(start_loss(x, 3 * x)) == pytest.approx(0.0, abs=1e-7)
    diffuse = x + 0.1
    assert float(start_loss(x, diffuse, background_weight=1.0)) > float(
        start_loss(x, diffuse, background_weight=0.0)) > 0


def test_patch_zones_are_the_metric_zones(bank):
    from mne_learned_mm.evaluation.metrics import seed_zone

    gen = torch.Generator().manual_seed(6)
    y, x, which, amp = bank.sample(gen, 40, BankConfig(), return_patches=True)
    seeds, zones, active = recipe_mod.patch_zones(bank, which, amp)
    assert active.tolist() == (amp != 0).tolist()
    adjacency = bank.geometry.adjacency
    checked = 0
    for i in range(40):
        present = [j for j in range(amp.shape[1]) if active[i, j]]
        patches = {j: bank.index[which[i, j]][bank.weight[which[i, j]] > 0].numpy()
                   for j in present}
        for j in present:
            seed = int(seeds[i, j])
            assert seed == bank.seeds[which[i, j]]
            expected = set(seed_zone(adjacency, seed, [patches[o] for o in present
                                                       if o != j]).tolist()) - {seed}
            assert set(torch.where(zones[i, j])[0].tolist()) == expected
            checked += 1
    assert checked > 40  # some mixtures have several patches


def test_peak_loss_penalises_a_peak_off_the_seed():
    x = torch.tensor([[0.0, 0.5, 1.0, 0.9, 0.0, 0.0]])
    seeds = torch.tensor([[2]])
    zones = torch.tensor([[[True, True, False, True, True, False]]])
    active = torch.tensor([[True]])
    on_seed = float(peak_loss(x, seeds, zones, active, smoothing=0.01))
    assert on_seed == pytest.approx(0.0, abs=1e-4)  # the peak leads by 10 δ
    shifted = x.clone()
    shifted[0, 3] = 2.0  # the peak one source off: about m − v = 1 − 0.5
    assert float(peak_loss(shifted, seeds, zones, active, smoothing=0.01)) == pytest.approx(
        0.5, abs=1e-3)
    outside = x.clone()
    outside[0, 5] = 3.0  # larger, but outside the zone: only rescales
    assert float(peak_loss(outside, seeds, zones, active, 0.01)) < 1e-3
    assert float(peak_loss(-x, seeds, zones, active, 0.01)) == pytest.approx(on_seed)
    none = torch.tensor([[False]])
    assert float(peak_loss(shifted, seeds, zones, none)) == 0.0
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: peak_loss(v, seeds.expand(3, 1), zones.expand(3, 1, 6),
                            active.expand(3, 1), 0.1), (z,))


def test_recipe_rejects_unknown_keys(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"optim": {"n_step": 3}}))
    with pytest.raises(ValueError, match="n_step"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"members": [{}, {"bank": {"drw": "order"}}]}))
    with pytest.raises(ValueError, match="drw"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"members": [{}, {"bank": {"draw": "seed"}}]}))
    with pytest.raises(ValueError, match='draw must be "patch" or "order"'):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"members": [{"start": {"hidden": 8}}]}))
    with pytest.raises(ValueError, match="overrides 'bank' and/or 'optim'"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"start": {"members": 3}, "members": [{}, {}]}))
    with pytest.raises(ValueError, match="number of recipe members"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"members": []}))
    with pytest.raises(ValueError, match="at least one member"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"mm": [{"stage": "prior", "init_from": "default"}]}))
    with pytest.raises(ValueError, match="the recipe sets them"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"mm": [{"stage": "prior", "lr_max": 1.0}]}))
    with pytest.raises(ValueError, match="lr_max"):
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"mm": [{"stage": "prior", "solver": {"n_iter": 3}}]}))
    with pytest.raises(ValueError, match="the recipe sets them"):  # mm_solver does
        recipe_mod.load_recipe(path)
    path.write_text(json.dumps({"mm": [{"stage": "prior"}], "mm_solver": {"prior_hiden": 8}}))
    with pytest.raises(ValueError, match="prior_hiden"):
        recipe_mod.load_recipe(path)
    with pytest.raises(ValueError, match="n_jobs must be at least 1"):
        recipe_mod.train_members(recipe_mod.load_recipe("tiny"), None, tmp_path, n_jobs=0)
    with pytest.raises(FileNotFoundError, match="packaged recipe"):
        recipe_mod.load_recipe(tmp_path / "missing.json")
    for name in recipe_mod.RECIPES:
        assert isinstance(recipe_mod.load_recipe(name), recipe_mod.Recipe)


def test_tiny_recipe_trains_resumes_and_solves(tmp_path, fwd_default):
    out = tmp_path / "model"
    recipe_mod.main(["tiny", "--out", str(out), "--max-minutes", "0"])  # one step, stop
    for k in range(2):  # the two members of the ensemble
        history = (out / f"member{k}" / recipe_mod.HISTORY).read_text().splitlines()
        assert history[1].split(",")[0] == "1"
    assert not (out / "weights.pt").exists()
    recipe_mod.main(["tiny", "--out", str(out)])  # resumes to the end, writes the model
    for k in range(2):
        rows = (out / f"member{k}" / recipe_mod.HISTORY).read_text().splitlines()
        assert rows[-1].split(",")[0] == "4"
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == "amortized" and config["trained"]["steps"] == 2 * 4
    # the MM stages trained after the members, each from the previous one's model
    assert [(r["stage"], r["done"]) for r in config["trained"]["mm"]] == [
        ("prior", True), ("bilevel", True)]
    start_only = json.loads((out / "start" / "config.json").read_text())
    assert start_only["solver"]["n_iter"] == 0 and "mm" not in start_only["trained"]
    stage1 = json.loads((out / "mm1" / "train_config.json").read_text())
    assert stage1["init"] == "amortized" and stage1["init_from"] == str(out / "mm0")
    assert config["solver"] == {**recipe_mod.load_recipe("tiny").mm_solver, "n_iter": 1}
    assert stage1["solver"] == recipe_mod.load_recipe("tiny").mm_solver
    from mne_learned_mm.pretrained import load_state

    final, stage = load_state(out)[0], load_state(out / "mm1")[0]
    for name, w in stage.items():  # the model's Φ and curvature net are the last stage's
        if not name.startswith("start."):
            torch.testing.assert_close(final[name], w, rtol=0, atol=0)
    assert config["trained"]["topographies"] == 2 * 4 * 16
    assert config["start"]["members"] == config["trained"]["members"] == 2
    pipe, _ = load_model(out, precision="float32")
    # the model's network is the mean of the members' own checkpoints, in float16
    recipe = recipe_mod.load_recipe("tiny")
    z = torch.randn(3, fwd_default["nsource"])
    members = []
    for k in range(2):
        one = StartNetwork(fwd_default["nsource"], recipe.member(k).start)
        net = torch.load(out / f"member{k}" / recipe_mod.CKPT, weights_only=False)["net"]
        one.load_state_dict({n: v.half().float() for n, v in net.items()})  # stored so
        members.append(one.eval()(z))
    with torch.no_grad():
        torch.testing.assert_close(pipe.start_network(z), (members[0] + members[1]) / 2)
    assert not torch.allclose(members[0], members[1])  # their own draws and seeds
    L = torch.as_tensor(make_leadfield(fwd_default), dtype=torch.float32)
    Y = torch.randn(2, L.shape[0], 16)
    Y = Y - Y.mean(1, keepdim=True)
    X, history = pipe.solve(Y, L)
    cost = history.cost
    assert torch.all(cost[:, 1:] <= cost[:, :-1] + 1e-5)  # the certificate: descent
    X_neg, _ = pipe.solve(-Y, L)
    torch.testing.assert_close(X_neg, -X, rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_amortized_start_is_the_patterns_of_the_components(fwd_small):
    """X0 = F A: the network's patterns of the temporal components, least-squares times."""
    torch.manual_seed(4)
    L = torch.as_tensor(make_leadfield(fwd_small), dtype=torch.float64)
    net = StartNetwork(L.shape[1], StartConfig(hidden=16, depth=1, max_rank=3)).double()
    n, T = L.shape[0], 30
    u = torch.randn(n, 2, dtype=torch.float64)
    v = torch.randn(2, T, dtype=torch.float64)
    noise = 1e-3 * torch.randn(2, n, T, dtype=torch.float64)
    Y = torch.stack([torch.outer(u[:, 0], v[0]), 40 * u @ v]) + noise  # rank 1 and 2
    Y = Y - Y.mean(1, keepdim=True)
    Y_r, rank = denoise(Y, 3)
    assert rank.tolist() == [1, 2]
    X0 = amortized_start(Y, L, net)
    from mne_learned_mm.solver.init import tikhonov_operator

    K = tikhonov_operator(L, net.config.reg, "sloreta")
    # rank 1: every time sample has the pattern of the (one) component
    x = net.patterns(Y_r[0].T, L, K).T
    Lx = L @ x
    torch.testing.assert_close(X0[0], x * ((Y_r[0] * Lx).sum(0) / Lx.square().sum(0)),
                               rtol=1e-6, atol=1e-12)
    # rank 2: X0 lies in the span of the two patterns f(K s_k u_k)
    U, S, _ = torch.linalg.svd(Y[1], full_matrices=False)
    F = net.patterns((U[:, :2] * S[:2]).T, L, K).T
    coef = torch.linalg.lstsq(F, X0[1]).solution
    torch.testing.assert_close(F @ coef, X0[1], rtol=1e-6, atol=1e-9 * float(X0[1].abs().max()))


def test_paper_recipe_is_the_papers_configuration():
    """The reference row's recipe for the bilevel CLI: random start, scalar bound, I = 10."""
    from importlib import resources

    from mne_learned_mm.training import TrainConfig

    text = (resources.files("mne_learned_mm.training") / "recipes" / "paper.json").read_text()
    cfg = TrainConfig.from_dict(json.loads(text))
    assert cfg.init == "random" and cfg.stage == "bilevel" and cfg.model == "mm"
    assert cfg.solver["bound"] == "hvp" and cfg.solver["n_iter"] == 10
    assert cfg.lr == 5e-5


def test_inverse_keeps_the_gain_between_calls_and_refits(fwd_default):
    import mne

    from mne_learned_mm import LearnedMMInverse

    inv = LearnedMMInverse(n_iter=0, device="cpu").fit(fwd_default)
    info = mne.create_info(fwd_default["info"]["ch_names"], 512.0, "eeg")
    rng = np.random.default_rng(0)
    evoked = mne.EvokedArray(rng.standard_normal((len(info["ch_names"]), 16)) * 1e-6, info)
    first = inv.apply(evoked)
    gain = inv._gain_cache[1]
    second = inv.apply(evoked)
    assert inv._gain_cache[1] is gain  # reused
    np.testing.assert_array_equal(first.data, second.data)
    bad = evoked.copy()
    bad.info["bads"] = [bad.ch_names[0]]
    inv.apply(bad)
    assert inv._gain_cache[1] is not gain
    assert len(inv._gain_cache[1][0]) == len(info["ch_names"]) - 1
    inv.fit(fwd_default)
    assert inv._gain_cache is None


@pytest.fixture(scope="module")
def small_fwd_file(tmp_path_factory, fwd_small):
    """The small forward as a file (what the recipe CLI reads)."""
    import mne

    fname = tmp_path_factory.mktemp("fwd") / "small-fwd.fif"
    with pytest.warns(RuntimeWarning, match="free orientation"):  # read back, re-fixed
        mne.write_forward_solution(fname, fwd_small, verbose=False)
    return fname


def test_recipe_for_another_forward(tmp_path, fwd_small, small_fwd_file):
    """Any forward: a recipe without MM stages trains and writes the start alone."""
    fname = small_fwd_file
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"start": {"hidden": 16, "depth": 1},
                                  "optim": {"batch_size": 8, "n_steps": 2}, "orders": [0, 1],
                                  "val_samples": 2,
                                  "members": [{}, {"optim": {"seed": 1}}]}))
    out = tmp_path / "m"
    # the two members in two processes
    recipe_mod.main([str(recipe), "--fwd", str(fname), "--out", str(out), "--n-jobs", "2",
                     "--n-threads", "1"])
    assert all((out / f"member{k}" / recipe_mod.CKPT).exists() for k in range(2))
    pipe, config = load_model(out)
    assert config["solver"]["n_iter"] == 0 and config["n_sources"] == fwd_small["nsource"]
    assert config["trained"]["steps"] == 4
    L = torch.as_tensor(make_leadfield(fwd_small), dtype=torch.float32)
    X, _ = pipe.solve(torch.randn(1, L.shape[0], 8), L)
    assert X.shape == (1, L.shape[1], 8) and torch.isfinite(X).all()


def test_shipped_model_records_the_default_recipe():
    """The packaged model was written by the packaged recipe, members and all."""
    from mne_learned_mm.pretrained import load_state

    _, config = load_state("default")
    recipe = recipe_mod.load_recipe("default")
    assert recipe_mod.Recipe.from_dict(config["recipe"]) == recipe
    assert config["start"]["members"] == len(recipe.members) == config["trained"]["members"]
    assert config["trained"]["steps"] == sum(c.n_steps for k in range(len(recipe.members))
                                             for c in recipe.member(k).optim.cycles())
    # its MM refinement was trained by the recipe's stages, to their last step
    assert [r["stage"] for r in config["trained"]["mm"]] == [s["stage"] for s in recipe.mm]
    assert all(r["done"] for r in config["trained"]["mm"])
    assert config["solver"] == {**recipe.mm_solver, "n_iter": recipe.n_iter}


def test_lr_schedule_by_steps_or_by_minutes():
    """Warm-up then cosine to zero, over the steps or over the training minutes."""
    by_steps = recipe_mod.Optimisation(n_steps=1000)
    factors = [recipe_mod.lr_factor({"step": s, "minutes": 0.0}, by_steps)
               for s in range(1000)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[19:], factors[20:]))  # decays after warm-up
    assert factors[500] == pytest.approx(0.5, abs=1e-2)
    by_time = recipe_mod.Optimisation(minutes=10.0)
    f = [recipe_mod.lr_factor({"step": 0, "minutes": m}, by_time) for m in (0.1, 5.0, 10.0)]
    assert f[0] == pytest.approx(0.5, abs=1e-3) and f[1] == pytest.approx(0.5, abs=1e-3)
    assert f[2] == 0.0
    assert recipe_mod.progress({"step": 10 ** 6, "minutes": 2.5}, by_time) == 0.25


def test_recipe_by_minutes_trains_until_then(tmp_path, small_fwd_file):
    """optim.minutes: the step count follows the hardware; the model records the device."""
    fname = small_fwd_file
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"start": {"hidden": 16, "depth": 1},
                                  "optim": {"batch_size": 8, "minutes": 0.02},
                                  "orders": [0, 1], "val_samples": 2}))
    out = tmp_path / "m"
    recipe_mod.main([str(recipe), "--fwd", str(fname), "--out", str(out)])
    _, config = load_model(out)
    assert config["trained"]["device"] == "cpu"
    assert config["trained"]["minutes"] >= 0.0
    state = torch.load(out / recipe_mod.CKPT, weights_only=False)["state"]
    assert state["minutes"] >= 0.02 and state["step"] > 1  # ran for its minutes, not 1 step


def test_warm_restarts_continue_the_weights_and_resume_exactly(tmp_path, small_fwd_file):
    """optim.restarts: further cycles from the last weights, each with a fresh optimiser,
    its own draws and its own warm-up; stopped after every step and resumed, the same."""
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({
        "start": {"hidden": 16, "depth": 1},
        "optim": {"batch_size": 8, "n_steps": 3, "restarts": [{"n_steps": 2, "lr": 5e-4}]},
        "orders": [0, 1], "val_samples": 2, "eval_minutes": 0.0,
        "checkpoint_minutes": 100.0}))
    args = [str(recipe), "--fwd", str(small_fwd_file)]
    torch.manual_seed(0)  # the initial weights: as in a new process
    recipe_mod.main(args + ["--out", str(tmp_path / "full")])
    torch.manual_seed(0)
    for _ in range(5):  # one step per run
        recipe_mod.main(args + ["--out", str(tmp_path / "steps"), "--max-minutes", "0"])
    recipe_mod.main(args + ["--out", str(tmp_path / "steps")])  # finished: exports
    ck = {k: torch.load(tmp_path / k / recipe_mod.CKPT, weights_only=False)
          for k in ("full", "steps")}
    assert ck["full"]["state"]["step"] == 5 and ck["full"]["state"]["cycle"] == 1
    for name, w in ck["full"]["net"].items():
        torch.testing.assert_close(ck["steps"]["net"][name], w, rtol=0, atol=0)
    rows = (tmp_path / "full" / recipe_mod.HISTORY).read_text().splitlines()
    lr = {int(r.split(",")[0]): float(r.split(",")[4]) for r in rows[1:]}
    cycle0 = recipe_mod.Optimisation(n_steps=3)
    cycle1 = recipe_mod.Optimisation(n_steps=2, lr=5e-4, seed=100)
    assert lr[3] == pytest.approx(1e-3 * recipe_mod.lr_factor({"step": 2, "minutes": 0}, cycle0))
    assert lr[4] == pytest.approx(5e-4 * recipe_mod.lr_factor({"step": 0, "minutes": 0}, cycle1))
    assert lr[4] > lr[3]  # warmed up again
    assert json.loads((tmp_path / "steps" / "config.json").read_text())["trained"]["steps"] == 5
    cycles = recipe_mod.load_recipe(str(recipe)).optim.cycles()
    assert [(c.n_steps, c.lr, c.seed, c.restarts) for c in cycles] == [
        (3, 1e-3, 0, ()), (2, 5e-4, 100, ())]
    ensemble = recipe_mod.Recipe(optim=recipe_mod.Optimisation(
        restarts=({"n_steps": 2}, {"n_steps": 2, "seed": 7})), members=({}, {}))
    assert [[c.seed for c in ensemble.member(k).optim.cycles()] for k in (0, 1)] == [
        [0, 100, 7], [0, 101, 7]]  # own draws per member and cycle unless set
    with pytest.raises(ValueError, match="optim.restarts sets some of"):
        recipe_mod.Optimisation(restarts=({"batch_size": 4},))


def test_optimiser_is_adamw():
    """The cycle's optimiser (fused where torch has it) makes AdamW's update."""
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 5)
    b = torch.nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    before = a.weight.detach().clone()
    optim = recipe_mod.Optimisation(lr=1e-2, weight_decay=0.1)
    opt_a, _ = recipe_mod._optimiser(a, optim, "cpu")
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(4, 6)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert (a.weight - before).abs().max() > 1e-2  # the weights moved


def test_bank_moved_to_the_cpu_draws_the_same(fwd_small):
    """PatchBank.to(device) with the CPU: the same draws, bit for bit."""
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = PatchBank.from_forward(fwd_small, orders=(0, 2))
    b = PatchBank.from_forward(fwd_small, orders=(0, 2)).to("cpu")
    assert b.device == torch.device("cpu")
    for x, y in zip(a.sample(gen_a, 32, return_patches=True),
                    b.sample(gen_b, 32, return_patches=True)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_bank_samples_on_the_gpu(fwd_small):
    """On a GPU: the step's operators and the topographies are drawn there."""
    b = PatchBank.from_forward(fwd_small, orders=(0, 2)).to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(5)
    keep, T, L = recipe_mod.step_operator(b, gen, recipe_mod.Optimisation(whiten_prob=1.0))
    y, x = b.sample(gen, 64, BankConfig(), transform=T)
    assert y.is_cuda and x.is_cuda and L.is_cuda
    torch.testing.assert_close(y.norm(dim=1), torch.ones(64, device="cuda"))


def test_bank_order_weights(bank):
    """draw="order" with order_weights: the orders in those proportions."""
    gen = torch.Generator().manual_seed(0)
    which, amp = bank.draw_mixtures(gen, 3000, BankConfig(draw="order",
                                                          order_weights=(1, 0, 0, 0)))
    assert set(bank.orders[which[amp != 0].numpy()]) == {0}
    which, amp = bank.draw_mixtures(gen, 3000, BankConfig(draw="order", n_patches=(1, 1),
                                                          order_weights=(3, 1, 1, 1)))
    share = np.mean(bank.orders[which[:, 0].numpy()] == 0)
    assert abs(share - 0.5) < 0.04
    with pytest.raises(ValueError, match='needs draw="order"'):
        BankConfig(order_weights=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="2 weights for the bank's orders 0-3"):
        bank.draw_mixtures(gen, 4, BankConfig(draw="order", order_weights=(1, 1)))



def test_gpu_recipe_is_the_default_model_trained_by_time():
    """The gpu recipe changes only how long and in what batches the default trains."""
    default, gpu = recipe_mod.load_recipe("default"), recipe_mod.load_recipe("gpu")
    assert gpu.optim.minutes is not None and default.optim.minutes is None
    assert gpu.members == default.members and gpu.bank == default.bank
    assert gpu.start == default.start and gpu.orders == default.orders
    # the same MM stages, with more windows in larger batches
    assert gpu.mm_solver == default.mm_solver
    assert [{k: v for k, v in s.items() if k not in ("n_train", "batch_size")}
            for s in gpu.mm] == [{k: v for k, v in s.items() if k not in ("n_train", "batch_size")}
                                 for s in default.mm]
    timing = ("n_steps", "minutes", "batch_size", "lr", "restarts")
    for f in dataclasses.fields(default.optim):
        if f.name not in timing:
            assert getattr(gpu.optim, f.name) == getattr(default.optim, f.name), f.name
    assert len(gpu.optim.cycles()) == len(default.optim.cycles())  # the same warm restarts
    assert all(c.minutes is not None for c in gpu.optim.cycles())


def test_float16_start_network_is_the_float32_one(fwd_default):
    """float16 weights (the CPU default): float32's patterns to ~1e-6, row by row."""
    if half_weight_network(StartNetwork(4, StartConfig(hidden=8, depth=1))) is None:
        pytest.skip("this torch has no float16 dynamic quantization on this CPU")
    exact, _ = load_model(precision="float32")
    fast, _ = load_model()  # "auto": float16 weights on CPU
    # every member's every layer: float16 weights in the fast copy, float32 in the exact one
    n_linear = exact.start_network.config.members * (exact.start_network.config.depth + 1)
    assert sum(type(m) is torch.nn.Linear for m in exact.start_network.modules()) == n_linear
    assert not any(type(m) is torch.nn.Linear for m in fast.start_network.modules())
    bank = PatchBank.from_forward(fwd_default, orders=(0, 2))
    y = bank.sample(torch.Generator().manual_seed(0), 64)[0]
    L = torch.as_tensor(make_leadfield(fwd_default), dtype=torch.float32)
    z = y @ exact._operator(L).T
    with torch.no_grad():
        a, b = exact.start_network(z), fast.start_network(z)
        scale = a.abs().amax(1, keepdim=True)
        assert ((a - b).abs() / scale).max() < 1e-4
        # each row on its own: a topography's pattern does not depend on its batch
        c = torch.cat([fast.start_network(z[k:k + 1]) for k in range(3)])
        assert ((c - b[:3]).abs() / scale[:3]).max() < 1e-4
        torch.testing.assert_close(fast.start_network(-z), -b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model(precision="int8")


def test_bfloat16_step_is_the_float32_one(bank):
    """optim.matmul_dtype="bfloat16": the same step's loss and gradient to bf16's precision."""
    torch.manual_seed(0)
    net = StartNetwork(bank.n_sources, StartConfig(hidden=64, depth=2))
    grads, losses = [], []
    for dtype in recipe_mod.MATMUL_DTYPES:
        recipe = recipe_mod.Recipe(optim=recipe_mod.Optimisation(batch_size=64,
                                                                 matmul_dtype=dtype))
        gen = torch.Generator().manual_seed(3)
        _, T, L = recipe_mod.step_operator(bank, gen, recipe.optim)
        K = tikhonov_operator(L, recipe.start.reg, "sloreta")
        net.zero_grad()
        loss = recipe_mod._step_loss(net, bank, gen, recipe, T, K, "cpu")
        loss.backward()
        assert loss.dtype == torch.float32
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.ravel() for p in net.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99
    assert not torch.equal(grads[0], grads[1])  # bf16 did run: not the float32 numbers
    with pytest.raises(ValueError, match="matmul_dtype must be one of"):
        recipe_mod.Optimisation(matmul_dtype="float16")


def test_member_threads_fill_idle_cores():
    """Members left over by the last round of n_jobs share the idle processes' threads."""
    assert recipe_mod.member_threads(3, 2, 1) == [1, 1, 2]
    assert recipe_mod.member_threads(4, 2, 1) == [1, 1, 1, 1]
    assert recipe_mod.member_threads(5, 3, 2) == [2, 2, 2, 3, 3]
    assert recipe_mod.member_threads(3, 1, 2) == [2, 2, 2]
    assert recipe_mod.member_threads(1, 2, 1) == [2]
    assert recipe_mod.member_threads(3, 2, None) == [None] * 3
