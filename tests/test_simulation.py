"""Tests of the simulation subpackage (geometry, waveforms, NMM, noise, datasets)."""

from dataclasses import replace

import mne
import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.signal import welch
from scipy.sparse.csgraph import connected_components

from mne_learned_mm._forward import _tris_adjacency
from mne_learned_mm.head import default_info
from mne_learned_mm.simulation import (
    EvokedConfig,
    NMMConfig,
    NoiseConfig,
    SereegaConfig,
    SimulatedDataset,
    SourceGeometry,
    apply_channel_mask,
    brain_background,
    collate,
    detect_spikes,
    draw_patches,
    gaussian_erp,
    jansen_rit,
    load_simulations,
    load_spike_bank,
    make_leadfield,
    power_law_noise,
    save_simulations,
    simulate_evoked_extended,
    snr_db,
    split_indices,
    worker_init_fn,
)

SMALL_BANK = dict(n_clips=20, n_regions=10, chunk_duration=5.0)


@pytest.fixture(scope="module")
def geometry(fwd_small):
    return SourceGeometry.from_forward(fwd_small)


@pytest.fixture()
def nmm_cache(tmp_path, monkeypatch):
    """Keep spike banks of these tests out of the user's cache."""
    monkeypatch.setenv("MNE_LEARNED_MM_DATA", str(tmp_path))
    return tmp_path


def _clean(ds, sample):
    return ds.L.astype(np.float64) @ sample["X"].astype(np.float64)


# --------------------------------------------------------------------------- geometry
def test_geometry_from_forward(fwd_small, geometry):
    n_src = fwd_small["nsource"]
    assert geometry.pos.shape == (n_src, 3)
    np.testing.assert_array_equal(geometry.pos, fwd_small["source_rr"])
    assert np.abs(geometry.pos).max() < 0.2  # metres
    for v, s in zip(geometry.vertices, fwd_small["src"]):
        np.testing.assert_array_equal(v, s["vertno"])
    adj = geometry.adjacency
    assert sparse.issparse(adj) and adj.format == "csr" and adj.shape == (n_src, n_src)
    assert adj.diagonal().sum() == 0
    assert abs(adj - adj.T).sum() == 0
    # same graph as the triangulation of used vertices (MNE's helper vs ours)
    assert abs(adj - _tris_adjacency(fwd_small["src"])).sum() == 0
    # icosahedral mesh with a few sources dropped: at most 6 neighbours, mostly 5-6
    degree = np.diff(adj.indptr)
    assert degree.max() == 6 and np.median(degree) >= 5
    n_lh = len(geometry.vertices[0])
    assert adj[:n_lh, n_lh:].nnz == 0  # hemispheres apart


def test_rings_match_hop_distance(geometry):
    seed = 17
    assert list(geometry.rings(seed, 0)) == [seed]
    neighbours = geometry.adjacency[seed].indices
    np.testing.assert_array_equal(geometry.rings(seed, 1), np.sort(np.r_[seed, neighbours]))
    dist = geometry.ring_distance(seed)
    for order in range(1, 8):
        np.testing.assert_array_equal(geometry.rings(seed, order),
                                      np.flatnonzero(dist <= order))
    assert np.isinf(dist[geometry.rings(len(geometry.pos) - 1, 0)])  # other hemisphere
    # beyond the precomputed radius too
    np.testing.assert_array_equal(geometry.rings(seed, 20), np.flatnonzero(dist <= 20))
    with pytest.raises(ValueError, match="order"):
        geometry.rings(seed, -1)


def test_patches_connected_ordered_disjoint(geometry):
    rng = np.random.default_rng(0)
    n_three = 0
    for _ in range(40):
        seeds, orders, patches = draw_patches(rng, geometry, (3, 3), (1, 3), margin=2)
        n_three += len(seeds) == 3
        assert 1 <= len(seeds) <= 3 and len(orders) == len(seeds) == len(patches)
        for seed, order, patch in zip(seeds, orders, patches):
            assert patch.dtype == np.int64 and seed in patch
            assert 1 <= order <= 3
            dist = geometry.ring_distance(seed)
            # exactly the sources within `order` rings, reaching that order
            np.testing.assert_array_equal(patch, np.flatnonzero(dist <= order))
            assert dist[patch].max() == order
            sub = geometry.adjacency[patch][:, patch]
            assert connected_components(sub, directed=False)[0] == 1
        for j in range(1, len(seeds)):
            # later seed at least order + 2 rings from earlier patches:
            # patches neither overlap nor touch
            dist = geometry.ring_distance(seeds[j])
            for k in range(j):
                assert dist[patches[k]].min() >= orders[j] + 2
                assert not np.intersect1d(patches[j], patches[k]).size
    assert n_three >= 20


def test_patch_amplitude_decay(fwd_small, geometry):
    cfg = SereegaConfig(n_patches=(1, 1), order=(4, 4))
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=5, config=cfg)
    s = ds[3]
    (seed,), (patch,) = s["seeds"], s["patches"]
    t_peak = np.argmax(np.abs(s["X"][seed]))
    ratio = s["X"][patch, t_peak] / s["X"][seed, t_peak]
    d = np.linalg.norm(geometry.pos[patch] - geometry.pos[seed], axis=1)
    sigma = d.max() / 2
    np.testing.assert_allclose(ratio, np.exp(-0.5 * (d / sigma) ** 2), rtol=1e-5)
    assert ratio[np.argmax(d)] == pytest.approx(np.exp(-2), rel=1e-5)
    assert np.all(np.diff(ratio[np.argsort(d)]) <= 1e-7)  # decays with distance
    # outside the patch nothing is active; time courses shared up to the factor
    outside = np.setdiff1d(np.arange(geometry.n_sources), patch)
    assert not s["X"][outside].any()
    np.testing.assert_allclose(s["X"][patch] / ratio[:, None],
                               np.tile(s["X"][seed], (len(patch), 1)), rtol=1e-4, atol=1e-15)


# --------------------------------------------------------------------------- waveforms
def test_gaussian_erp_shape():
    times = np.arange(64) / 512.0
    erp = gaussian_erp(times, 0.06, 0.06, 2.0)
    assert erp.shape == (1, 64)
    t = np.linspace(0, 0.12, 1201)
    w = gaussian_erp(t, 0.06, 0.06, 2.0)[0]
    assert w.max() == pytest.approx(2.0)
    assert np.interp(0.06 + 0.01, t, w) == pytest.approx(2.0 * np.exp(-0.5), rel=1e-4)  # sd = w/6


def test_sereega_defaults_and_ranges(fwd_small):
    cfg = SereegaConfig()
    assert (cfg.sfreq, cfg.n_times, cfg.amplitude, cfg.width) == (512.0, 64, 10e-9, 0.06)
    assert cfg.amplitude_dev == (0.5, 0.7) and cfg.center_dev == (0.5, 0.3)
    assert cfg.width_dev == (0.02, 0.1) and cfg.n_patches == (1, 3) and cfg.order == (1, 5)
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=200, seed=3)
    peaks, lats, n_patches = [], [], []
    for i in range(100):
        s = ds[i]
        n_patches.append(len(s["seeds"]))
        for seed in s["seeds"]:
            x = s["X"][seed]
            peaks.append(x.max())
            lats.append(np.argmax(x) / ds.sfreq)
    peaks, lats = np.array(peaks), np.array(lats)
    assert s["X"].shape == (fwd_small["nsource"], 64) and s["Y"].shape == (90, 64)
    assert set(n_patches) == {1, 2, 3}
    assert peaks.min() >= 0.9 * 10e-9 * 0.5 * 0.3 and peaks.max() <= 10e-9 * 1.5 * 1.7
    assert peaks.max() > 15e-9 and peaks.min() < 8e-9  # the ranges are used
    centre = 64 / 512 / 2
    assert lats.min() >= centre * 0.5 * 0.7 - 2 / 512 and lats.max() <= centre * 1.5 * 1.3
    # all positive by default, both signs with random_sign
    ds_sign = SimulatedDataset(fwd_small, "sereega", n_samples=50,
                               config=SereegaConfig(random_sign=True))
    signs = {np.sign(ds_sign[i]["X"][seed].sum())
             for i in range(20) for seed in ds_sign[i]["seeds"]}
    assert signs == {-1.0, 1.0}


def test_sereega_any_length(fwd_small):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=5,
                          config=SereegaConfig(n_times=200, sfreq=256.0))
    s = ds[0]
    assert s["Y"].shape == (90, 200) and ds.sfreq == 256.0
    assert np.argmax(np.abs(s["X"][s["seeds"][0]])) > 0


def test_evoked_mode(fwd_small):
    cfg = EvokedConfig(n_components=(3, 3), random_sign=False)
    assert (cfg.sfreq, cfg.n_times, cfg.tmin) == (1000.0, 500, -0.1)
    ds = SimulatedDataset(fwd_small, "evoked", n_samples=10, config=cfg)
    assert ds.noise.background_fraction > 0
    times = ds.tmin + np.arange(cfg.n_times) / cfg.sfreq
    for i in range(5):
        s = ds[i]
        assert s["Y"].shape == (90, 500)
        x = s["X"][s["seeds"][0]]
        peak = np.abs(x).max()
        assert np.abs(x[times < -0.02]).max() < 0.05 * peak  # quiet baseline
        assert x.max() > 0.2 * peak and x.min() < -0.2 * peak  # both signs
        assert snr_db(_clean(ds, s), s["Y"] - _clean(ds, s)) == pytest.approx(5.0, abs=0.1)


# --------------------------------------------------------------------------- noise
@pytest.mark.parametrize("snr", [5.0, -3.0, 20.0])
def test_snr_exact(fwd_small, snr):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=10, snr_db=snr)
    for i in range(5):
        s = ds[i]
        M = _clean(ds, s)
        assert snr_db(M, s["Y"] - M) == pytest.approx(snr, abs=0.1)
        assert s["snr_db"] == snr


def test_snr_range_and_coloured_noise(fwd_small):
    noise = NoiseConfig(exponent=1.0, background_fraction=0.3, n_background_sources=100)
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=30, snr_db=(0.0, 10.0), noise=noise,
                          config=SereegaConfig(n_times=256))
    snrs = []
    for i in range(15):
        s = ds[i]
        M = _clean(ds, s)
        assert snr_db(M, s["Y"] - M) == pytest.approx(s["snr_db"], abs=0.1)
        snrs.append(s["snr_db"])
    assert 0.0 <= min(snrs) and max(snrs) <= 10.0 and np.ptp(snrs) > 3.0
    # pink noise: low frequencies carry more power than high ones
    e = power_law_noise(np.random.default_rng(0), (50, 1024), 1.0)
    f, p = welch(e, nperseg=256, axis=-1)
    p = p.mean(0)
    assert p[1:5].mean() > 10 * p[-40:].mean()
    assert e.std(axis=-1) == pytest.approx(np.ones(50))


def test_brain_background_covariance(fwd_small):
    L = make_leadfield(fwd_small)
    rng = np.random.default_rng(0)
    # all sources once each: covariance over time -> L L^T (up to the
    # per-dipole unit variance), white and 1/f alike
    for exponent in (0.0, 1.0):
        B = brain_background(rng, L, 20000, n_sources=L.shape[1], exponent=exponent)
        C_hat, C = np.cov(B), L @ L.T
        corr = np.corrcoef(C_hat.ravel(), C.ravel())[0, 1]
        assert corr > 0.97
        if exponent == 0:
            assert np.trace(C_hat) == pytest.approx(np.trace(C), rel=0.05)
    # fewer dipoles than channels: drawn directly, rank = number of dipoles
    B = brain_background(rng, L, 500, n_sources=10)
    assert np.linalg.matrix_rank(B) == 10


def test_average_reference_and_channels(fwd_small):
    L = make_leadfield(fwd_small)
    np.testing.assert_allclose(L.sum(axis=0), 0.0, atol=1e-12 * np.abs(L).max())
    raw = fwd_small["sol"]["data"].astype(np.float64)
    np.testing.assert_allclose(L, raw - raw.mean(axis=0))
    # channel order and bads follow info
    info = mne.pick_info(fwd_small["info"], np.arange(89, -1, -1))
    info["bads"] = [info["ch_names"][0]]
    L2, names = make_leadfield(fwd_small, info, return_ch_names=True)
    assert names == info["ch_names"][1:]
    sub = raw[::-1][1:]
    np.testing.assert_allclose(L2, sub - sub.mean(axis=0))
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=3)
    np.testing.assert_allclose(ds[0]["Y"].sum(axis=0), 0.0, atol=1e-5 * np.abs(ds[0]["Y"]).max())
    assert ds.L.dtype == np.float32 and ds.info["ch_names"] == ds.ch_names
    assert ds.info["sfreq"] == 512.0


def test_channel_dropout(fwd_small):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=10, snr_db=200.0, channel_dropout=0.3)
    n_dropped = []
    for i in range(5):
        s = ds[i]
        mask = s["mask"]
        assert mask.dtype == bool and mask.shape == (90,)
        n_dropped.append((~mask).sum())
        assert not s["Y"][~mask].any()
        np.testing.assert_allclose(s["Y"][mask].sum(0), 0, atol=1e-5 * np.abs(s["Y"]).max())
        expected = apply_channel_mask(ds.L.astype(np.float64), mask) @ s["X"]
        np.testing.assert_allclose(s["Y"], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert 5 < np.mean(n_dropped) < 50


def test_channel_dropout_interval(fwd_small):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=40, channel_dropout=(0.0, 0.6))
    kept = np.array([ds[i]["mask"].sum() for i in range(40)])
    assert kept.max() >= 80 and kept.min() <= 55  # the probability varies per sample
    assert ds.describe()["channel_dropout"] == [0.0, 0.6]
    for bad in (1.0, -0.1, (0.5, 0.2), (0.1, 0.2, 0.3)):
        with pytest.raises(ValueError, match="channel_dropout"):
            SimulatedDataset(fwd_small, "sereega", n_samples=2, channel_dropout=bad)


# --------------------------------------------------------------------------- neural mass
def test_jansen_rit_alpha():
    # standard Jansen & Rit (1995) input: p around 220 pulses/s
    cfg = NMMConfig(p_mean=220.0, p_sigma=2.0)
    out = jansen_rit(12000, np.full(4, 3.25), config=cfg, rng=0, decim=4)[500:]  # 500 Hz
    assert out.shape == (2500, 4)
    f, p = welch(out, fs=500.0, nperseg=512, axis=0)
    peaks = f[np.argmax(p[1:], axis=0) + 1]
    assert np.all((peaks >= 8) & (peaks <= 12)), peaks
    assert np.all([len(detect_spikes(x, 500.0)) == 0 for x in out.T])


def test_jansen_rit_spikes_for_raised_a():
    cfg = NMMConfig()
    assert (cfg.A, cfg.B, cfg.a, cfg.b, cfg.C, cfg.v0, cfg.e0, cfg.r) == (
        3.25, 22.0, 100.0, 50.0, 135.0, 6.0, 2.5, 0.56)
    A = np.r_[np.full(6, 3.25), np.full(6, cfg.A_active)]
    out = jansen_rit(12000, A, config=cfg, rng=1, decim=4)[500:]  # 5 s at 500 Hz
    rates = np.array([len(detect_spikes(x, 500.0, cfg.spike_threshold)) / 5.0 for x in out.T])
    assert np.all(rates[:6] == 0)  # background: no spikes
    assert np.all(rates[6:] > 0.3) and rates[6:].mean() > 0.8  # raised A: spikes
    # a spike is a large transient: peak far above the median, sharp
    x = out[:, 6]
    pk = detect_spikes(x, 500.0)[0]
    assert x[pk] - np.median(x) > 8.0
    euler = jansen_rit(2000, np.full(2, 3.6), config=replace(cfg, method="euler"), rng=1)
    assert np.isfinite(euler).all()


def test_spike_bank_cached(nmm_cache):
    cfg = NMMConfig(**SMALL_BANK)
    bank = load_spike_bank(cfg, verbose=False)
    files = list((nmm_cache / "nmm").glob("spike_bank_*.npz"))
    assert len(files) == 1
    assert bank.shape == (20, 500) and bank.dtype == np.float32
    np.testing.assert_array_equal(load_spike_bank(cfg), bank)  # read back
    pos = np.argmax(bank, axis=1) / 500
    assert np.all((pos >= 0.3 - 1e-9) & (pos <= 0.7 + 1e-9))
    np.testing.assert_allclose(bank.max(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.median(bank, axis=1), 0.0, atol=1e-6)
    for clip in bank:  # one spike per clip
        assert len(detect_spikes(clip, 500.0, threshold=0.75)) == 1
    # a dataset-only change (amplitude) reuses the bank, a model change does not
    load_spike_bank(replace(cfg, amplitude=5e-9))
    assert len(list((nmm_cache / "nmm").glob("*.npz"))) == 1
    other = load_spike_bank(replace(cfg, seed=1))
    assert len(list((nmm_cache / "nmm").glob("*.npz"))) == 2
    assert not np.array_equal(other, bank)


def test_nmm_dataset(fwd_small, nmm_cache):
    cfg = NMMConfig(**SMALL_BANK)
    ds = SimulatedDataset(fwd_small, "nmm", n_samples=10, config=cfg)
    bank = load_spike_bank(cfg)
    assert ds.sfreq == 500.0 and ds.snr_db == (5.0, 20.0)
    s = ds[0]
    assert s["Y"].shape == (90, 500) and s["X"].shape == (fwd_small["nsource"], 500)
    x = s["X"][s["seeds"][0]].astype(np.float64)
    corr = np.abs(bank @ x) / (np.linalg.norm(bank, axis=1) * np.linalg.norm(x))
    assert corr.max() > 0.9999
    assert 5.0 <= s["snr_db"] <= 20.0
    M = _clean(ds, s)
    assert snr_db(M, s["Y"] - M) == pytest.approx(s["snr_db"], abs=0.1)


# --------------------------------------------------------------------------- datasets
def test_dataset_reproducible(fwd_small):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=20, seed=7)
    a, b = ds[4], ds[4]
    again = SimulatedDataset(fwd_small, "sereega", n_samples=20, seed=7)[4]
    for other in (b, again):
        np.testing.assert_array_equal(a["Y"], other["Y"])
        np.testing.assert_array_equal(a["X"], other["X"])
        np.testing.assert_array_equal(a["seeds"], other["seeds"])
    assert not np.array_equal(ds[5]["Y"], a["Y"])
    assert not np.array_equal(SimulatedDataset(fwd_small, n_samples=20, seed=8)[4]["Y"], a["Y"])
    # a window starting later sees the same samples
    shifted = SimulatedDataset(fwd_small, "sereega", n_samples=10, seed=7, start=4)
    np.testing.assert_array_equal(shifted[0]["Y"], a["Y"])
    np.testing.assert_array_equal(ds[-1]["Y"], ds[19]["Y"])
    with pytest.raises(IndexError):
        ds[20]


def test_dataloader_workers_match(fwd_small):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=8, seed=2, channel_dropout=0.1)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate,
                                         worker_init_fn=worker_init_fn)
    batches = list(loader)
    assert [len(b["seeds"]) for b in batches] == [3, 3, 2]
    Y = torch.cat([b["Y"] for b in batches])
    X = torch.cat([b["X"] for b in batches])
    mask = torch.cat([b["mask"] for b in batches])
    assert Y.dtype == torch.float32 and mask.dtype == torch.bool
    assert Y.shape == (8, 90, 64) and X.shape == (8, fwd_small["nsource"], 64)
    seeds = [s for b in batches for s in b["seeds"]]
    for i in range(8):
        s = ds[i]
        np.testing.assert_array_equal(Y[i].numpy(), s["Y"])
        np.testing.assert_array_equal(X[i].numpy(), s["X"])
        np.testing.assert_array_equal(mask[i].numpy(), s["mask"])
        np.testing.assert_array_equal(seeds[i], s["seeds"])
    assert isinstance(batches[0]["patches"][0], list)


def test_split_indices():
    train, val = split_indices(10000)
    assert (train.start, train.stop, val.start, val.stop) == (0, 8000, 8000, 10000)
    parts = split_indices(101, (0.7, 0.2, 0.1))
    assert sum(len(p) for p in parts) == 101
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:]))
    with pytest.raises(ValueError):
        split_indices(10, (0.8, 0.3))


def test_save_and_load(fwd_small, tmp_path):
    ds = SimulatedDataset(fwd_small, "sereega", n_samples=6, seed=4, snr_db=(3.0, 8.0))
    fname = tmp_path / "sims.npz"
    save_simulations(fname, ds, indices=[1, 3, 5])
    saved = load_simulations(fname)
    assert len(saved) == 3
    assert saved.config["kind"] == "sereega" and saved.config["seed"] == 4
    assert saved.config["config"]["amplitude"] == 10e-9
    assert saved.config["indices"] == [1, 3, 5]
    np.testing.assert_array_equal(saved.L, ds.L)
    for j, i in enumerate([1, 3, 5]):
        a, b = ds[i], saved[j]
        for key in ("Y", "X", "seeds", "orders", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        assert len(a["patches"]) == len(b["patches"])
        for p, q in zip(a["patches"], b["patches"]):
            np.testing.assert_array_equal(p, q)
        assert a["snr_db"] == b["snr_db"]


def test_bad_arguments(fwd_small):
    with pytest.raises(ValueError, match="kind"):
        SimulatedDataset(fwd_small, "tvb")
    with pytest.raises(TypeError, match="SereegaConfig"):
        SimulatedDataset(fwd_small, "sereega", config=EvokedConfig())
    free = mne.convert_forward_solution(fwd_small, force_fixed=False, surf_ori=True,
                                        verbose=False)
    free["source_ori"] = mne.io.constants.FIFF.FIFFV_MNE_FREE_ORI
    with pytest.raises(ValueError, match="fixed-orientation"):
        make_leadfield(free)
    with pytest.raises(ValueError, match="order"):
        SereegaConfig(order=(3, 1))


# --------------------------------------------------------------------------- MNE objects
def test_simulate_evoked_extended(fwd_small):
    evoked, stc = simulate_evoked_extended(fwd_small, n_patches=2, order=2, snr_db=5.0,
                                           random_state=0)
    assert isinstance(evoked, mne.EvokedArray) and isinstance(stc, mne.SourceEstimate)
    assert evoked.info["sfreq"] == 512.0 and evoked.data.shape == (90, 64)
    projs = evoked.info["projs"]
    assert len(projs) == 1 and projs[0]["active"] and "Average" in projs[0]["desc"]
    for v, s in zip(stc.vertices, fwd_small["src"]):
        np.testing.assert_array_equal(v, s["vertno"])
    assert stc.subject == "fsaverage"
    np.testing.assert_allclose(stc.times, evoked.times)
    assert 1e-9 < np.abs(stc.data).max() < 1e-7  # A·m
    active = np.flatnonzero(np.abs(stc.data).max(axis=1))
    assert len(active) > 2
    L = make_leadfield(fwd_small)
    clean = L @ stc.data
    noise = evoked.data - clean
    assert snr_db(clean, noise) == pytest.approx(5.0, abs=0.1)
    np.testing.assert_allclose(evoked.data.sum(axis=0), 0, atol=1e-10 * np.abs(evoked.data).max())
    # reproducible by random_state
    ev2, stc2 = simulate_evoked_extended(fwd_small, n_patches=2, order=2, random_state=0)
    np.testing.assert_array_equal(ev2.data, evoked.data)
    np.testing.assert_array_equal(stc2.data, stc.data)


def test_simulate_evoked_extended_evoked_kind(fwd_small):
    info = default_info(sfreq=250.0)
    info = mne.pick_info(info, np.arange(80, -1, -1))  # 81 channels, reversed
    evoked, stc = simulate_evoked_extended(fwd_small, info, kind="evoked", n_times=200,
                                           snr_db=10.0, random_state=np.random.default_rng(3))
    assert evoked.ch_names == info["ch_names"]
    assert evoked.info["sfreq"] == 250.0 and evoked.times[0] == pytest.approx(-0.1)
    assert evoked.data.shape == (81, 200) and stc.data.shape[1] == 200
    L = make_leadfield(fwd_small, info)
    clean = L @ stc.data
    assert snr_db(clean, evoked.data - clean) == pytest.approx(10.0, abs=0.1)
