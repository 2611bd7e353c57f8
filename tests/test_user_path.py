"""The MNE user's path (issue 19): noise covariance, projectors, lazy Epochs, plotting,
devices, input checks, save/load, as ``mne.minimum_norm`` users expect them."""

import logging
import warnings

import mne
import numpy as np
import pytest
import torch

from mne_learned_mm import (
    LearnedMMInverse,
    apply_learned_mm,
    fetch_fsaverage_head,
    make_fsaverage_forward,
)
from mne_learned_mm.head import default_info
from mne_learned_mm.simulation import SimulatedDataset
from mne_learned_mm.simulation.noise import brain_background


@pytest.fixture(scope="module")
def inv(fwd_default):
    return LearnedMMInverse(device="cpu").fit(fwd_default)


@pytest.fixture(scope="module")
def evoked(fwd_default):
    ds = SimulatedDataset(fwd_default, kind="sereega", n_samples=1, seed=11, snr_db=10.0)
    return mne.EvokedArray(ds[0]["Y"].astype(float), ds.info, tmin=-0.01, verbose=False)


def _corr(a, b):
    return np.corrcoef(a.data.ravel(), b.data.ravel())[0, 1]


def _ssp(ch_names, seed=0):
    v = np.random.default_rng(seed).standard_normal(len(ch_names))
    v -= v.mean()
    v /= np.linalg.norm(v)
    data = dict(nrow=1, ncol=len(ch_names), row_names=None, col_names=list(ch_names),
                data=v[None])
    return mne.Projection(data=data, desc="test-ssp", kind=1, active=False,
                          explained_var=None)


# -- 1. noise covariance ------------------------------------------------------------
def test_ad_hoc_cov_whitens_without_changing_white_noise(inv, evoked, fwd_default):
    """A diagonal cov of equal variances is a scaled identity: same estimate."""
    cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    stc_cov = apply_learned_mm(evoked, fwd_default, cov, device="cpu")
    stc = inv.apply(evoked)
    assert _corr(stc, stc_cov) > 0.9999
    np.testing.assert_allclose(np.abs(stc_cov.data).max(), np.abs(stc.data).max(), rtol=1e-3)


def test_covariance_changes_the_estimate(evoked, fwd_default):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((90, 90))
    cov = mne.Covariance(A @ A.T * 1e-12, evoked.ch_names, [], [], 1000, verbose=False)
    inv_cov = LearnedMMInverse(device="cpu").fit(fwd_default, cov)
    assert inv_cov.noise_cov_ is cov
    stc = inv_cov.apply(evoked)
    assert np.isfinite(stc.data).all()
    assert _corr(stc, LearnedMMInverse(device="cpu").fit(fwd_default).apply(evoked)) < 0.999


def test_whitened_brain_background_counts_as_colored_noise(fwd_default, evoked, monkeypatch):
    """An evoked window in a 1/f brain background, solved with the covariance of its
    baseline as a user computes it: the patch choices fit fewer components than the
    Gavish-Donoho rank keeps (the background's are not source-like); on white sensor
    noise they fit all of them."""
    from mne_learned_mm.simulation import make_leadfield
    from mne_learned_mm.solver import start as start_mod

    rng = np.random.default_rng(0)
    ds = SimulatedDataset(fwd_default, kind="evoked", n_samples=1, seed=3, snr_db=300.0)
    L = make_leadfield(fwd_default)
    clean = L @ ds[0]["X"].astype(float)
    n_base = 2000
    noise = brain_background(rng, L, n_base + clean.shape[1])
    noise *= np.linalg.norm(clean) / np.linalg.norm(noise[:, n_base:]) / 10 ** (5 / 20)
    info = mne.create_info(ds.info["ch_names"], 1000.0, "eeg")
    info.set_montage(ds.info.get_montage(), verbose=False)
    bg = mne.EvokedArray(clean + noise[:, n_base:], info, verbose=False)
    bg.set_eeg_reference(projection=True, verbose=False)
    baseline = mne.io.RawArray(noise[:, :n_base], info, verbose=False)
    baseline.set_eeg_reference(projection=True, verbose=False)  # as MNE asks for a cov
    with warnings.catch_warnings():  # the noise-only epochs need no baseline correction
        warnings.filterwarnings("ignore", "Epochs are not baseline corrected")
        cov = mne.compute_covariance(mne.make_fixed_length_epochs(baseline, duration=0.25,
                                                                  verbose=False),
                                     method="empirical", verbose=False)
    seen = []
    original = start_mod.choice_noise

    def spy(Y, comps, Vh, keep, *args):
        keep_c, variance = original(Y, comps, Vh, keep, *args)
        seen.append((int(keep.sum()), int(keep_c.sum())))
        return keep_c, variance

    monkeypatch.setattr(start_mod, "choice_noise", spy)
    LearnedMMInverse(n_jobs=1).fit(fwd_default, cov).apply(bg)
    (kept, fitted), = seen
    assert fitted < kept, seen
    seen.clear()
    LearnedMMInverse(n_jobs=1).fit(fwd_default).apply(evoked)  # white sensor noise
    (kept, fitted), = seen
    assert fitted == kept, seen


def test_covariance_checked_in_fit(fwd_default, evoked):
    with pytest.raises(TypeError, match="instance of Covariance"):
        LearnedMMInverse(device="cpu").fit(fwd_default, np.eye(90))
    cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    bad = cov.copy()
    bad["data"] = bad["data"].copy()
    bad["data"][3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LearnedMMInverse(device="cpu").fit(fwd_default, bad)
    bad["data"][3] = -1.0
    with pytest.raises(ValueError, match="negative"):
        LearnedMMInverse(device="cpu").fit(fwd_default, bad)
    other = mne.make_ad_hoc_cov(mne.create_info(["A1x", "B2x", "C3x"], 512.0, "eeg"),
                                verbose=False)
    with pytest.raises(ValueError, match="none of the forward's"):
        LearnedMMInverse(device="cpu").fit(fwd_default, other)


def test_covariance_missing_channels(fwd_default, evoked):
    info = evoked.copy().drop_channels(["Cz"]).info
    cov = mne.make_ad_hoc_cov(info, verbose=False)
    inv_cov = LearnedMMInverse(device="cpu").fit(fwd_default, cov)
    with pytest.raises(ValueError, match="missing from the noise covariance.*Cz"):
        inv_cov.apply(evoked)
    cov["bads"] = []
    stc = inv_cov.apply(evoked.copy().drop_channels(["Cz"]))  # the same channels: fine
    assert np.isfinite(stc.data).all()


# -- 2. projectors --------------------------------------------------------------------
def test_unapplied_projector_is_honoured(inv, evoked):
    with_proj = evoked.copy().add_proj([_ssp(evoked.ch_names)])
    assert not with_proj.info["projs"][0]["active"]
    stc_unapplied, res = inv.apply(with_proj, return_residual=True)
    stc_applied = inv.apply(with_proj.copy().apply_proj(verbose=False))
    np.testing.assert_allclose(stc_unapplied.data, stc_applied.data, rtol=1e-4,
                               atol=1e-4 * np.abs(stc_applied.data).max())
    # data and gain are projected: the residual has nothing along the projector
    # (the estimate itself may be the same patches as without it)
    proj_vec = with_proj.info["projs"][0]["data"]["data"][0]
    _, res_none = inv.apply(evoked, return_residual=True)
    scale = np.abs(res_none.data).max()
    assert np.abs(proj_vec @ res.data).max() < 1e-6 * scale
    assert np.abs(proj_vec @ res_none.data).max() > 1e-3 * scale


def test_projector_and_whitener_together(fwd_default, evoked):
    """As mne.minimum_norm: the whitener is built on the projected covariance."""
    with_proj = evoked.copy().add_proj([_ssp(evoked.ch_names, seed=1)])
    cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    inv_cov = LearnedMMInverse(device="cpu").fit(fwd_default, cov)
    _, P, G, W = inv_cov._prepare_gain(with_proj.info)
    proj_vec = with_proj.info["projs"][0]["data"]["data"][0]
    np.testing.assert_allclose(W @ np.ones(90), 0, atol=1e-6 * np.abs(W).max())
    np.testing.assert_allclose(W @ proj_vec, 0, atol=1e-6 * np.abs(W).max())
    np.testing.assert_allclose(P @ G, G, atol=1e-10 * np.abs(G).max())
    stc = inv_cov.apply(with_proj)
    stc_applied = inv_cov.apply(with_proj.copy().apply_proj(verbose=False))
    np.testing.assert_allclose(stc.data, stc_applied.data, rtol=1e-4,
                               atol=1e-4 * np.abs(stc.data).max())


# -- 3. lazy epochs and the residual -------------------------------------------------
def _raw_with_events(fwd, n_events=8, seed=0, sfreq=512.0):
    """Continuous EEG: brain-background noise + an extended source after each event."""
    rng = np.random.default_rng(seed)
    info = default_info(sfreq)
    L = fwd["sol"]["data"]
    spacing = int(0.5 * sfreq)
    n_times = spacing * (n_events + 2)
    noise = brain_background(rng, L, n_times)
    geo_patch = np.arange(40, 46)  # six neighbouring-index sources, fixed amplitude
    t = np.arange(int(0.2 * sfreq)) / sfreq
    wave = np.exp(-0.5 * ((t - 0.08) / 0.015) ** 2)
    signal = np.zeros_like(noise)
    onsets = spacing * (1 + np.arange(n_events))
    for onset in onsets:
        signal[:, onset:onset + len(t)] += L[:, geo_patch].sum(1, keepdims=True) * wave
    noise *= np.linalg.norm(signal) / np.linalg.norm(noise) * 2.0
    raw = mne.io.RawArray(signal + noise, info, verbose=False)
    events = np.column_stack([onsets, np.zeros_like(onsets), np.ones_like(onsets)])
    return raw, events


def test_return_residual_on_lazy_epochs(inv, fwd_default):
    raw, events = _raw_with_events(fwd_default, n_events=3)
    lazy = mne.Epochs(raw, events, tmin=-0.05, tmax=0.1, baseline=None, preload=False,
                      verbose=False)
    stcs, res = inv.apply(lazy, return_residual=True)
    assert isinstance(res, mne.BaseEpochs) and len(res) == len(stcs) == 3
    loaded = lazy.copy().load_data()
    stcs_l, res_l = inv.apply(loaded, return_residual=True)
    np.testing.assert_allclose(res.get_data(), res_l.get_data(), rtol=1e-6,
                               atol=1e-9 * np.abs(res_l.get_data()).max())
    np.testing.assert_array_equal(res.events, loaded.events)


# -- the usual pipeline, end to end (README "Use") -----------------------------------
def test_end_to_end_raw_epochs_covariance_plot(fwd_default, tmp_path):
    raw, events = _raw_with_events(fwd_default, n_events=8, seed=3)
    epochs = mne.Epochs(raw, events, tmin=-0.25, tmax=0.15, preload=False, verbose=False)
    noise_cov = mne.compute_covariance(epochs, tmax=0, verbose=False)
    evoked = epochs.average()
    fwd = make_fsaverage_forward(evoked.info)
    stc = apply_learned_mm(evoked, fwd, noise_cov, device="cpu")
    assert stc.data.shape == (1284, len(evoked.times))
    stcs = LearnedMMInverse(device="cpu").fit(fwd, noise_cov).apply(epochs)
    assert len(stcs) == len(epochs) == 8
    assert all(np.isfinite(s.data).all() for s in stcs)
    # the README's figure, offline, without a display
    subjects_dir = fetch_fsaverage_head()
    with pytest.warns(FutureWarning, match="matplotlib 3D backend"):  # MNE 1.13-1.14
        fig = stc.plot(subjects_dir=subjects_dir, initial_time=0.08, backend="matplotlib")
    fig.savefig(tmp_path / "stc.png")
    assert (tmp_path / "stc.png").stat().st_size > 10_000
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- 6. devices --------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_cuda_on_cpu_build_says_what_is_available(fwd_default):
    with pytest.raises(ValueError, match="Available on this machine: cpu"):
        LearnedMMInverse(device="cuda").fit(fwd_default)


def test_unknown_device(fwd_default):
    with pytest.raises(ValueError, match='device must be "auto", "cpu".*Available'):
        LearnedMMInverse(device="gpu").fit(fwd_default)


# -- 7. threads ----------------------------------------------------------------------
def test_n_jobs_sets_and_restores_threads(fwd_default, evoked):
    seen = []
    est = LearnedMMInverse(device="cpu", n_jobs=1).fit(fwd_default)
    solve = est.solver_.solve_low_rank

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return solve(*args, **kwargs)

    est.solver_.solve_low_rank = spy
    before = torch.get_num_threads()
    est.apply(evoked)
    assert seen == [1] and torch.get_num_threads() == before
    # two workers share one batch's worth of epochs, one thread each; an Evoked gets one
    est.set_params(n_jobs=2)
    seen.clear()
    epochs = mne.EpochsArray(np.stack([evoked.data] * 3), evoked.info, verbose=False)
    assert len(est.apply(epochs)) == 3 and seen == [1, 1]
    seen.clear()
    est.apply(evoked)
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n_jobs must not be 0"):
        LearnedMMInverse(device="cpu", n_jobs=0).fit(fwd_default)


# -- 10. inputs and messages ---------------------------------------------------------
def test_too_few_channels(inv, evoked):
    with pytest.raises(ValueError, match="Too few EEG channels: 1 good channel"):
        inv.apply(evoked.copy().pick(["Cz"]))
    with pytest.warns(RuntimeWarning, match="Only 8 good EEG channels"):
        inv.apply(evoked.copy().pick(evoked.ch_names[::12]))


@pytest.mark.parametrize("n_iter, exc, match", [
    (2.5, TypeError, "n_iter must be a non-negative int"),
    (-1, ValueError, "n_iter must be a non-negative int"),
])
def test_bad_n_iter(fwd_default, n_iter, exc, match):
    with pytest.raises(exc, match=match):
        LearnedMMInverse(n_iter=n_iter, device="cpu").fit(fwd_default)


def test_bad_bound_and_batch_size(fwd_default):
    with pytest.raises(ValueError, match="bound must be one of"):
        LearnedMMInverse(bound="tight", device="cpu").fit(fwd_default)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        LearnedMMInverse(batch_size=0, device="cpu").fit(fwd_default)


def test_missing_and_nan_weights(tmp_path, fwd_default):
    from mne_learned_mm.pretrained import _packaged_dir, load_state

    state, config = load_state("default")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(_packaged_dir("default").joinpath(
        "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no weights.pt"):
        LearnedMMInverse(model=empty, device="cpu").fit(fwd_default)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, empty / "weights.pt")
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        LearnedMMInverse(model=empty, device="cpu").fit(fwd_default)


def test_set_params_after_fit_needs_refit(fwd_default, evoked):
    est = LearnedMMInverse(device="cpu").fit(fwd_default)
    est.set_params(batch_size=8, n_jobs=1)  # used at apply time: fine
    est.apply(evoked)
    est.set_params(n_iter=3)
    with pytest.raises(RuntimeError, match="n_iter changed since fit"):
        est.apply(evoked)
    est.fit(fwd_default)
    assert est.history_["cost"].shape[1] if hasattr(est, "history_") else True
    est.apply(evoked)
    assert est.history_["cost"].shape[1] == 4


def test_apply_learned_mm_takes_epochs_and_batch_size(fwd_default, evoked):
    epochs = mne.EpochsArray(np.stack([evoked.data, -evoked.data]), evoked.info,
                             verbose=False)
    stcs = apply_learned_mm(inst=epochs, fwd=fwd_default, device="cpu", batch_size=1)
    assert len(stcs) == 2
    np.testing.assert_allclose(stcs[1].data, -stcs[0].data, atol=1e-4 * np.abs(stcs[0].data).max())


def test_quiet_at_default_verbosity(fwd_default, evoked, caplog):
    with caplog.at_level(logging.INFO, logger="mne"), mne.utils.use_log_level("info"):
        apply_learned_mm(evoked, fwd_default, device="cpu")
    assert "remain after picking" not in caplog.text


def test_save_load_fitted_state_overwrite_repr(tmp_path, fwd_default, evoked):
    cov = mne.make_ad_hoc_cov(evoked.info, verbose=False)
    est = LearnedMMInverse(device="cpu", n_iter=4, batch_size=16, n_jobs=1)
    assert "not fitted" in repr(est) and "n_iter=4" in repr(est)
    est.fit(fwd_default, cov)
    assert "fitted: 90 EEG channels × 1284 sources, noise_cov=yes" in repr(est)
    fname = tmp_path / "x-lmm.json"
    est.save(fname)
    assert (tmp_path / "x-lmm-fwd.fif").is_file() and (tmp_path / "x-lmm-cov.fif").is_file()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        est.save(fname)
    est.save(fname, overwrite=True)
    est2 = LearnedMMInverse.load(fname)
    assert est2.get_params() == est.get_params()
    assert est2.noise_cov_ is not None and est2.fwd_["nsource"] == 1284
    np.testing.assert_allclose(est2.apply(evoked).data, est.apply(evoked).data)
    unfitted = LearnedMMInverse(n_iter=5)
    unfitted.save(tmp_path / "u-lmm.json")
    assert not hasattr(LearnedMMInverse.load(tmp_path / "u-lmm.json"), "fwd_")


# -- 9. one forward for the classical methods and the learned solver -----------------
def test_free_orientation_forward_serves_both(inv, evoked):
    from mne.minimum_norm import apply_inverse, make_inverse_operator

    fwd_free = make_fsaverage_forward(evoked.info, fixed=False)
    assert fwd_free["source_ori"] == mne.io.constants.FIFF.FIFFV_MNE_FREE_ORI
    assert fwd_free["surf_ori"] and fwd_free["sol"]["data"].shape == (90, 3 * 1284)
    ev = evoked.copy().set_eeg_reference(projection=True, verbose=False)
    cov = mne.make_ad_hoc_cov(ev.info, verbose=False)
    op = make_inverse_operator(ev.info, fwd_free, cov, loose=0.2, depth=0.8, verbose=False)
    stc_sl = apply_inverse(ev, op, 1.0 / 9.0, "sLORETA", verbose=False)
    assert stc_sl.data.shape[0] == 1284
    stc_free = LearnedMMInverse(device="cpu").fit(fwd_free).apply(evoked)
    stc = inv.apply(evoked)
    np.testing.assert_allclose(stc_free.data, stc.data, rtol=1e-3,
                               atol=1e-4 * np.abs(stc.data).max())
    with pytest.raises(TypeError, match="fixed must be a bool"):
        make_fsaverage_forward(fixed="no")
