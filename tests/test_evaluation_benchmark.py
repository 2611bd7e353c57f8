"""Tests of the inverse-method registry and the benchmark (CLI included)."""

import json
from pathlib import Path

import mne
import numpy as np
import pytest
import torch
from mne.minimum_norm import apply_inverse, make_inverse_operator

from mne_learned_mm.evaluation import (
    CLASSICAL,
    available_methods,
    compute_metrics,
    get_method,
    make_method,
    noise_variance,
    register_method,
    run_benchmark,
    sample_evoked,
    select_channels,
    stc_to_array,
    white_noise_cov,
)
from mne_learned_mm.evaluation import benchmark as benchmark_mod
from mne_learned_mm.evaluation import methods as methods_mod
from mne_learned_mm.evaluation.benchmark import _jsonable, format_table, main
from mne_learned_mm.head import default_info
from mne_learned_mm.simulation import SimulatedDataset


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """MNE's solvers on these tiny problems are many times slower on shared cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def ds_small(fwd_small):
    return SimulatedDataset(fwd_small, kind="sereega", n_samples=3, seed=3, snr_db=5.0,
                            verbose=False)


def _evoked_and_cov(ds, i):
    sample = ds[i]
    sigma2 = noise_variance(sample["Y"], sample["X"], ds.L)
    return sample, sample_evoked(sample["Y"], ds.info), white_noise_cov(sigma2, ds.ch_names)


def test_noise_variance_matches_snr(ds_small):
    """The residual variance is the white-noise level set by the SNR."""
    for i in range(3):
        sample = ds_small[i]
        sigma2 = noise_variance(sample["Y"], sample["X"], ds_small.L)
        n, t = sample["Y"].shape
        clean = ds_small.L.astype(float) @ sample["X"].astype(float)
        expected = np.sum(clean**2) / 10 ** (sample["snr_db"] / 10) / ((n - 1) * t)
        assert sigma2 == pytest.approx(expected, rel=1e-3)
    evoked = sample_evoked(sample["Y"], ds_small.info)
    assert evoked.nave == 1 and evoked.info["projs"][0]["active"]
    np.testing.assert_allclose(evoked.data.mean(0), 0, atol=1e-20)


@pytest.mark.parametrize("method", ["MNE", "dSPM", "sLORETA", "eLORETA"])
def test_minimum_norm_cache_is_exact(fwd_small, ds_small, method):
    """Reusing one operator across noise levels equals one operator per sample."""
    solver = make_method(method)
    free = mne.convert_forward_solution(fwd_small, surf_ori=True, force_fixed=False,
                                        verbose=False)
    levels = []
    for i in range(3):
        _, evoked, cov = _evoked_and_cov(ds_small, i)
        levels.append(cov.data[0])
        stc = solver(evoked, fwd_small, cov)
        inv = make_inverse_operator(evoked.info, free, cov, loose=0.0, depth=0.8,
                                    verbose=False)
        ref = apply_inverse(evoked, inv, 1.0 / 9.0, method=method, verbose=False)
        np.testing.assert_allclose(stc.data, ref.data, rtol=1e-7,
                                   atol=1e-9 * np.abs(ref.data).max())
    assert len(set(levels)) == 3  # the noise level did change
    assert solver._key is not None and solver._cov.data[0] == levels[0]  # built once


def test_fixed_only_forward_has_no_depth(fwd_small, ds_small):
    fixed = fwd_small.copy()  # as if computed (and saved) with fixed orientation
    fixed["_orig_source_ori"] = mne.io.constants.FIFF.FIFFV_MNE_FIXED_ORI
    fixed["_orig_sol"] = fixed["sol"]["data"].copy()
    _, evoked, cov = _evoked_and_cov(ds_small, 0)
    stc = make_method("MNE")(evoked, fixed, cov)
    inv = make_inverse_operator(evoked.info, fixed, cov, loose=0.0, depth=None,
                                verbose=False)
    ref = apply_inverse(evoked, inv, 1.0 / 9.0, method="MNE", verbose=False)
    np.testing.assert_allclose(stc.data, ref.data, rtol=1e-7, atol=1e-20)


def test_stc_to_array(fwd_small):
    vertno = [s["vertno"] for s in fwd_small["src"]]
    n_lh = len(vertno[0])
    data = np.arange(6.0).reshape(3, 2)
    stc = mne.SourceEstimate(data, [vertno[0][[4]], vertno[1][[0, 7]]], 0, 1)
    X = stc_to_array(stc, fwd_small)
    assert X.shape == (fwd_small["nsource"], 2)
    np.testing.assert_array_equal(X[[4, n_lh, n_lh + 7]], data)
    assert np.count_nonzero(X) == 5
    stc = mne.SourceEstimate(data[:1], [np.array([10**6]), np.array([], int)], 0, 1)
    with pytest.raises(ValueError, match="not in the forward"):
        stc_to_array(stc, fwd_small)


@pytest.mark.parametrize("method", ["sLORETA", "eLORETA", "MxNE", "gamma_map"])
def test_single_source_exact_localization(fwd_small, ds_small, method):
    """Noiseless single sources are found exactly (whole pipeline, vertex order)."""
    solver = make_method(method)
    L = ds_small.L.astype(float)
    times = np.arange(64)
    for k in range(0, L.shape[1], 23):
        X = np.zeros((L.shape[1], 64))
        X[k] = 1e-8 * np.exp(-0.5 * ((times - 30) / 4.0) ** 2)
        Y = L @ X
        cov = white_noise_cov(1e-4 * np.mean(Y**2), ds_small.ch_names)
        X_hat = stc_to_array(solver(sample_evoked(Y, ds_small.info), fwd_small, cov),
                             fwd_small)
        m = compute_metrics(X, X_hat, [k], [np.array([k])], ds_small.geometry.pos,
                            ds_small.geometry.adjacency, ds_small.sfreq)
        assert m["LE"] == 0 and m["TE"] == 0, k
        assert np.argmax(np.abs(X_hat[:, 30])) == k


def test_classical_methods_benchmark(fwd_small):
    result = run_benchmark(fwd_small, n_samples=2, snr_db=30.0, methods=CLASSICAL, seed=1,
                           verbose=False)
    assert list(result["per_sample"]) == list(CLASSICAL)
    for name, values in result["per_sample"].items():
        assert len(values["LE"]) == 2 and all(t > 0 for t in values["ms"])
        assert np.all(np.isfinite(values["nMSE"])) and np.all(np.isfinite(values["PSNR"]))
    s = result["summary"]
    for name in ("MNE", "dSPM", "sLORETA", "eLORETA"):
        assert s[name]["found"]["mean"] == 100  # dense estimates
        for sparse in ("MxNE", "gamma_map"):  # few active sources: worse extent
            assert s[sparse]["AUC"]["mean"] < s[name]["AUC"]["mean"]
    assert result["dataset"]["n_sources"] == fwd_small["nsource"]
    assert set(result["solver_warnings"]) == set(CLASSICAL)


def test_random_sign_benchmark(fwd_small):
    seen = {}

    def record(evoked, fwd, noise_cov):
        seen.setdefault("data", []).append(evoked.data.copy())
        return _zeros(evoked, fwd, noise_cov)

    kw = dict(n_samples=6, snr_db=30.0, seed=1, verbose=False)
    plain = run_benchmark(fwd_small, methods={"rec": record}, **kw)
    signs = run_benchmark(fwd_small, methods={"rec": record}, random_sign=True, **kw)
    assert not plain["dataset"]["config"]["random_sign"]
    assert signs["dataset"]["config"]["random_sign"]
    assert [s["seeds"] for s in plain["samples"]] == [s["seeds"] for s in signs["samples"]]
    flipped = [not np.allclose(a, b) for a, b in zip(seen["data"][:6], seen["data"][6:])]
    assert any(flipped)


def _zeros(evoked, fwd, noise_cov):
    vertices = [s["vertno"] for s in fwd["src"]]
    return mne.SourceEstimate(np.zeros((fwd["nsource"], len(evoked.times))), vertices,
                              evoked.times[0], 1.0 / evoked.info["sfreq"])


def test_registry_custom_method(fwd_small, monkeypatch):
    monkeypatch.setattr(methods_mod, "METHODS", dict(methods_mod.METHODS))
    monkeypatch.setattr(methods_mod, "FACTORIES", dict(methods_mod.FACTORIES))
    register_method("zeros", _zeros)
    assert "zeros" in available_methods() and get_method("zeros") is _zeros
    with pytest.raises(ValueError, match="already registered"):
        register_method("zeros", _zeros)
    with pytest.raises(ValueError, match="takes no options"):
        make_method("zeros", alpha=1)
    with pytest.raises(ValueError, match="Unknown method"):
        make_method("nope")
    result = run_benchmark(fwd_small, n_samples=2, methods=["zeros", "MNE"], seed=0,
                           verbose=False)
    zeros = result["summary"]["zeros"]
    assert zeros["found"]["mean"] == 0 and zeros["AUC"]["mean"] == 50
    assert result["summary"]["MNE"]["found"]["mean"] == 100
    assert zeros["LE"]["mean"] > result["summary"]["MNE"]["LE"]["mean"]


def test_options_reach_the_solver():
    assert make_method("MxNE", alpha=20).alpha == 20
    assert make_method("gamma_map", maxit=7).maxit == 7
    assert make_method("eLORETA", lambda2=0.5).lambda2 == 0.5


def test_learned_methods_unavailable_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="needs a trained model"):
        make_method("learned_mm", model=tmp_path / "missing")
    from mne_learned_mm.pretrained import save_model

    save_model(tmp_path / "m", {"w": torch.zeros(1)}, {"kind": "mm"})
    with pytest.raises(RuntimeError, match="expects a '4dvarnet' model"):
        make_method("4dvarnet", model=tmp_path / "m")


def test_select_channels():
    info = default_info()
    for n, cap in [(64, "biosemi64"), (32, "biosemi32")]:
        names = select_channels(info, n)
        assert len(names) == n
        assert set(names) == set(mne.channels.make_standard_montage(cap).ch_names)
    assert select_channels(info, 90) == info["ch_names"]
    names = select_channels(info, 16)  # farthest-point sampling
    assert len(set(names)) == 16 and names == select_channels(info, 16)
    pos = np.array([info["chs"][info["ch_names"].index(c)]["loc"][:3] for c in names])
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    assert dist[np.triu_indices(16, 1)].min() > 0.04  # spread: > 4 cm apart
    with pytest.raises(ValueError, match="n_channels"):
        select_channels(info, 91)


def test_format_table_and_json():
    summary = {"A": {k: {"mean": 1.0, "sd": 0.5, "n": 2, "n_nan": 0, "n_inf": 0}
                     for k in ("LE", "AUC", "nMSE", "PSNR", "TE", "found", "ms")}}
    summary["A"]["PSNR"]["n_inf"] = 1
    table = format_table({"5": summary})
    assert table.count("\n") == 2 and "| 5 | A | 1.00 ± 0.50 |" in table
    assert "† (1 left out)" in table
    out = _jsonable({"a": [np.nan, np.inf, -np.inf, np.float32(2), np.int64(3)]})
    assert json.loads(json.dumps(out)) == {"a": [None, "inf", "-inf", 2.0, 3]}


def test_cli_smoke(fwd_small, tmp_path, capsys):
    fname = tmp_path / "small-fwd.fif"
    with pytest.warns(RuntimeWarning, match="free orientation"):
        mne.write_forward_solution(fname, fwd_small, verbose=False)
    files = main(["--n", "2", "--methods", "MNE", "sLORETA", "MxNE", "--fwd", str(fname),
                  "--channels", "32", "--snr-sweep", "0,20", "--seed", "5",
                  "--out-dir", str(tmp_path / "out")])
    assert all(f.is_file() for f in files.values())
    assert set(files) == {"md", "json", "png_0", "png_20"}
    text = files["md"].read_text()
    assert text.count("| MxNE |") == 2 and "32 channels" in text
    assert "| 20 | sLORETA |" in capsys.readouterr().out
    content = json.loads(files["json"].read_text())
    runs = content["runs"]
    assert [r["snr_db"] for r in runs] == [0.0, 20.0]
    assert len(runs[0]["per_sample"]["MNE"]["LE"]) == 2
    assert runs[0]["samples"][1]["seeds"] == runs[1]["samples"][1]["seeds"]  # same sources
    assert runs[0]["samples"][0]["noise_var"] > runs[1]["samples"][0]["noise_var"]
    assert len(runs[0]["dataset"]["ch_names"]) == 32
    assert content["config"]["args"]["seed"] == 5
    assert "MixedNorm(alpha=50" in content["config"]["method_reprs"]["MxNE"]


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="Unknown method"):
        main(["--methods", "nope"])
    with pytest.raises(SystemExit, match="needs a trained model"):
        main(["--model", str(tmp_path / "missing"), "--methods", "MNE"])
    with pytest.raises(SystemExit, match="method must be one of"):
        main(["--model", "MNE=x"])


def test_learned_mm_through_registry(fwd_default, monkeypatch):
    """The packaged model runs as a benchmark method (registered lazily)."""
    pytest.importorskip("mne_learned_mm.inverse")
    monkeypatch.setattr(methods_mod, "METHODS", dict(methods_mod.METHODS))
    monkeypatch.setattr(methods_mod, "FACTORIES", dict(methods_mod.FACTORIES))
    assert "learned_mm" not in methods_mod.METHODS and "learned_mm" in available_methods()
    method = get_method("learned_mm")
    assert "learned_mm" in methods_mod.METHODS and method.model == "default"
    result = run_benchmark(fwd_default, n_samples=1, methods=["learned_mm"], seed=0,
                           verbose=False)
    values = result["per_sample"]["learned_mm"]
    assert all(np.isfinite(values[k][0]) for k in ("LE", "AUC", "nMSE", "PSNR", "TE"))
    assert values["found"][0] == 100


# -- the benchmark CLI advertises what exists (issue 19, item 12) ---------------------
def test_cli_advertises_only_models_here(capsys):
    from mne_learned_mm.evaluation.benchmark import _parser, default_models_here

    only_shipped = {("learned_mm", "sereega"): "default"}
    text = " ".join(_parser(only_shipped).format_help().split())
    assert "--train-data" not in text and "--cross" not in text
    assert "4dvarnet with --model 4dvarnet=PATH" in text
    assert _parser(only_shipped).parse_args([]).methods[-1] == "learned_mm"
    with pytest.raises(SystemExit):
        _parser(only_shipped).parse_args(["--cross"])
    here = default_models_here()
    assert here[("learned_mm", "sereega")] == "default"
    for model in here.values():  # every advertised model can be loaded
        assert model == "default" or (Path(model) / "weights.pt").is_file()
    both = {**only_shipped, ("learned_mm", "nmm"): "x"}
    assert "--train-data {nmm,sereega}" in " ".join(_parser(both).format_help().split())


def test_cli_n_zero_and_missing_default_model(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["--n", "0", "--methods", "MNE"])
    assert "expected a positive int, got 0" in capsys.readouterr().err
    monkeypatch.setattr(benchmark_mod, "default_models_here",
                        lambda: {("learned_mm", "sereega"): "default"})
    with pytest.raises(SystemExit, match="No '4dvarnet' model trained on 'sereega'"):
        main(["--methods", "4dvarnet", "--n", "1"])
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        run_benchmark(None, n_samples=0, methods={})


def test_demo_timing_has_a_spread():
    from mne_learned_mm.__main__ import timing_summary

    summary = timing_summary([0.5, 0.7, 0.6])
    assert summary["mean"] == pytest.approx(600.0)
    assert summary["sd"] == pytest.approx(100.0)
    assert timing_summary([0.5])["sd"] == 0.0
