"""Tests of the evaluation metrics on hand-made source spaces."""

import numpy as np
import pytest
from scipy import sparse

from mne_learned_mm.evaluation.metrics import (
    METRICS,
    auc_at_peak,
    compute_metrics,
    neighbour_rings,
    nmse_at_peak,
    normalize_max,
    patch_localization_error,
    psnr,
    roc_auc,
    seed_zone,
    summarize_metrics,
)

SPACING = 0.005  # 5 mm between neighbouring sources of the chain
SFREQ = 500.0
N_SRC, N_TIMES = 60, 40


def _chain(n=N_SRC):
    pos = np.zeros((n, 3))
    pos[:, 0] = SPACING * np.arange(n)
    adj = sparse.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], format="csr")
    return pos, adj


def _grid(n=9):
    idx = np.arange(n * n).reshape(n, n)
    rows, cols = [], []
    for a, b in [(idx[:, :-1], idx[:, 1:]), (idx[:-1], idx[1:])]:
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_array((np.ones(rows.size), (rows, cols)), shape=(n * n, n * n)), idx


def _patch_sources(seeds, half_width=2, peaks=(15, 25), signs=(1.0, -0.7)):
    """Sources with Gaussian waveforms on patches of the chain."""
    X = np.zeros((N_SRC, N_TIMES))
    t = np.arange(N_TIMES)
    patches = []
    for seed, peak, sign in zip(seeds, peaks, signs):
        patch = np.arange(seed - half_width, seed + half_width + 1)
        space = np.exp(-0.5 * ((patch - seed) / half_width) ** 2)
        X[patch] += sign * np.outer(space, np.exp(-0.5 * ((t - peak) / 3.0) ** 2))
        patches.append(patch)
    return X, np.array(seeds), patches


def test_neighbour_rings_grid():
    """Rings on a 4-neighbour grid are diamonds of 2k²+2k+1 sources."""
    adj, idx = _grid()
    centre = idx[4, 4]
    for order in range(4):
        zone = neighbour_rings(adj, centre, order)
        assert zone.size == 2 * order**2 + 2 * order + 1
        r, c = np.unravel_index(zone, idx.shape)
        assert np.all(np.abs(r - 4) + np.abs(c - 4) <= order)
    # clipped at the border: corner with order 2 has 6 sources
    assert neighbour_rings(adj, idx[0, 0], 2).size == 6


def test_seed_zone_removes_other_patches():
    _, adj = _chain()
    patches = [np.arange(8, 13), np.arange(14, 19)]
    zone = seed_zone(adj, 10, patches, order=7)
    assert 10 in zone and 12 in zone  # own patch kept
    assert not np.isin(np.arange(14, 18), zone).any()  # other patch removed
    np.testing.assert_array_equal(zone, np.r_[3:14])


def test_perfect_reconstruction():
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([15, 40])
    for scale in (1.0, 3e-9):  # any positive scale gives the same metrics
        m = compute_metrics(X, scale * X, seeds, patches, pos, adj, SFREQ)
        assert list(m) == list(METRICS) + ["found"]
        assert m["found"] == 100
        assert m["LE"] == 0 and m["TE"] == 0
        assert m["AUC"] == pytest.approx(100.0)
        assert m["nMSE"] == pytest.approx(0.0, abs=1e-20)
        assert m["PSNR"] > 250  # +inf at scale 1, rounding errors otherwise
    m = compute_metrics(X, X, seeds, patches, pos, adj, SFREQ)
    assert m["PSNR"] == np.inf


@pytest.mark.parametrize("axis, shift", [(0, 1), (0, 2), (0, -3), (1, 1), (1, 4), (1, -6)])
def test_shifted_estimate(axis, shift):
    """Estimate rolled along the chain (axis 0) or in time (axis 1): LE is the
    shift distance, TE the delay."""
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([20])
    m = compute_metrics(X, np.roll(X, shift, axis=axis), seeds, patches, pos, adj, SFREQ)
    n_sources, n_samples = (abs(shift), 0) if axis == 0 else (0, abs(shift))
    assert m["LE"] == pytest.approx(1e3 * SPACING * n_sources)
    assert m["TE"] == pytest.approx(1e3 * n_samples / SFREQ)
    if axis == 0:
        assert m["AUC"] < 100
        assert m["nMSE"] > 0


def test_peak_outside_zone_is_not_found():
    """A peak more than 7 rings away is not the estimated seed."""
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([20])
    X_hat = 0.1 * X + np.roll(X, 10, axis=0)  # strong ghost 10 rings away
    m = compute_metrics(X, X_hat, seeds, patches, pos, adj, SFREQ)
    assert m["LE"] == 0
    m7 = compute_metrics(X, X_hat, seeds, patches, pos, adj, SFREQ, order=12)
    assert m7["LE"] == pytest.approx(50.0)


def test_patch_localization_error_flat_patch():
    """0 mm wherever the estimate peaks inside the patch; else the distance to its edge."""
    pos, adj = _chain()
    X = np.zeros((N_SRC, N_TIMES))
    patch = np.arange(18, 23)
    X[patch, 10] = 1.0  # flat: the true sources tie over the patch
    zone = seed_zone(adj, 20, [patch])
    for peak, edge in ((18, 0), (22, 0), (24, 2), (13, 5)):
        X_hat = np.zeros_like(X)
        X_hat[peak, 10] = 1.0
        assert patch_localization_error(X, X_hat, 20, patch, pos, zone) == pytest.approx(
            1e3 * SPACING * edge)
    # the LE to the seed counts 10 mm for a peak on the patch's edge
    X_hat = np.zeros_like(X)
    X_hat[18, 10] = 1.0
    assert compute_metrics(X, X_hat, [20], [patch], pos, adj, SFREQ)["LE"] == (
        pytest.approx(10.0))
    # no estimate in the zone: the farthest zone source from the patch
    far = np.max(np.abs(pos[zone, 0][:, None] - pos[patch, 0][None]).min(1))
    assert patch_localization_error(X, np.zeros_like(X), 20, patch, pos, zone) == (
        pytest.approx(1e3 * far))


def test_sign_flip():
    """LE, TE and AUC ignore the sign; nMSE and PSNR do not."""
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([15, 40])
    m = compute_metrics(X, -X, seeds, patches, pos, adj, SFREQ)
    assert m["LE"] == 0 and m["TE"] == 0
    assert m["AUC"] == pytest.approx(100.0)
    expected = np.mean([4 * np.mean(normalize_max(X[:, t]) ** 2) for t in (15, 25)])
    assert m["nMSE"] == pytest.approx(expected)
    Xn = normalize_max(X)
    r = Xn.min() - (-Xn).max()
    assert m["PSNR"] == pytest.approx(10 * np.log10(r**2 / np.mean(4 * Xn**2)))


def test_two_patches_zone_excludes_other_patch():
    """The other patch, though within 7 rings and stronger, is not picked."""
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([12, 18], half_width=2, peaks=(15, 15))
    X_hat = X.copy()
    X_hat[patches[1]] *= 0.1  # second patch weakly reconstructed
    m = compute_metrics(X, X_hat, seeds, patches, pos, adj, SFREQ)
    assert m["LE"] == 0
    # without the exclusion the second seed would be located on the first patch
    only_second = compute_metrics(X, X_hat, seeds[1:], patches[1:], pos, adj, SFREQ)
    assert only_second["LE"] == pytest.approx(1e3 * SPACING * 6)
    # per-seed average: a 2-source shift of the second patch only
    X_hat = X.copy()
    X_hat[:, :] = 0
    X_hat[patches[0]] = X[patches[0]]
    X_hat[patches[1] + 2] = X[patches[1]]
    m = compute_metrics(X, X_hat, seeds, patches, pos, adj, SFREQ)
    assert m["LE"] == pytest.approx(np.mean([0, 1e3 * SPACING * 2]))
    assert m["found"] == 100
    # second patch missed: worst case for it only, i.e. its farthest zone source
    X_hat[patches[1] + 2] = 0
    m = compute_metrics(X, X_hat, seeds, patches, pos, adj, SFREQ)
    assert m["found"] == 50
    zone = seed_zone(adj, 18, patches)
    assert m["LE"] == pytest.approx(0.5 * 1e3 * np.max(np.abs(pos[zone, 0] - pos[18, 0])))


def test_all_zero_estimate():
    """Worst-case LE, TE and PSNR, chance AUC, finite nMSE, no warning."""
    pos, adj = _chain()
    X, seeds, patches = _patch_sources([20])
    m = compute_metrics(X, np.zeros_like(X), seeds, patches, pos, adj, SFREQ)
    assert m["LE"] == pytest.approx(1e3 * SPACING * 7)
    assert m["TE"] == pytest.approx(1e3 * (N_TIMES - 1 - 15) / SFREQ)
    assert m["AUC"] == pytest.approx(50.0)
    assert m["nMSE"] == pytest.approx(np.mean(normalize_max(X[:, 15]) ** 2))
    # X >= 0 here, so R = min(Xn) - max(0) = 0: the worst PSNR
    assert m["PSNR"] == -np.inf
    assert m["found"] == 0
    m = compute_metrics(-X, np.zeros_like(X), seeds, patches, pos, adj, SFREQ)
    assert m["PSNR"] == pytest.approx(10 * np.log10(1 / np.mean(normalize_max(X) ** 2)))


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.random(200) < 0.2
        scores = np.round(rng.random(200) + labels * rng.random(), 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))
    assert np.isnan(roc_auc(np.ones(5, bool), np.arange(5.0)))
    X = np.zeros((N_SRC, N_TIMES))
    X[10:15, 5] = 1
    X_hat = rng.standard_normal(X.shape)
    expected = metrics.roc_auc_score(X[:, 5] > 0, np.abs(X_hat[:, 5]))
    assert auc_at_peak(X, X_hat, 12) == pytest.approx(100 * expected)


def test_nmse_and_psnr_values():
    X = np.zeros((4, 3))
    X[0, 1], X[1, 1] = 2.0, 1.0
    X_hat = np.zeros((4, 3))
    X_hat[0, 1], X_hat[2, 1] = 4.0, 4.0
    # Xn[:, 1] = (1, .5, 0, 0), X_hatn[:, 1] = (1, 0, 1, 0)
    assert nmse_at_peak(X, X_hat, 0) == pytest.approx((0.25 + 1) / 4)
    mse = (0.25 + 1) / 12
    assert psnr(X, X_hat) == pytest.approx(10 * np.log10((0 - 1) ** 2 / mse))


def test_summarize_and_errors():
    summary = summarize_metrics(
        [dict(LE=1, AUC=90, nMSE=0.1, PSNR=20, TE=2), dict(LE=3, AUC=np.nan, nMSE=0.3,
                                                           PSNR=30, TE=4)])
    assert summary["LE"] == {"mean": 2.0, "sd": 1.0, "n": 2, "n_nan": 0, "n_inf": 0}
    assert summary["AUC"]["n"] == 1 and summary["AUC"]["mean"] == 90
    summary = summarize_metrics([dict(LE=1, AUC=90, nMSE=0.1, PSNR=p, TE=2)
                                 for p in (10, 20, np.inf, -np.inf, np.nan)])
    assert summary["PSNR"] == {"mean": 15.0, "sd": 5.0, "n": 2, "n_nan": 1, "n_inf": 2}
    pos, adj = _chain()
    with pytest.raises(ValueError, match="equal shape"):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)), [0], [[0]], pos, adj, SFREQ)
