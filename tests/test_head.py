"""The embedded fsaverage head model and forward models."""

import time
from importlib import resources

import mne
import numpy as np
import pytest

from mne_learned_mm.head import (
    default_info,
    fetch_fsaverage_head,
    make_fsaverage_forward,
)


def test_default_info_montage():
    info = default_info()
    assert len(info["ch_names"]) == 90
    for ch in ("T3", "T4", "T5", "T6"):
        assert ch not in info["ch_names"]
    assert "Cz" in info["ch_names"]


def test_embedded_subject_files(subjects_dir):
    subj = subjects_dir / "fsaverage"
    for rel in ("surf/lh.white", "surf/rh.inflated", "surf/lh.sphere", "surf/rh.curv",
                "bem/inner_skull.surf", "bem/outer_skull.surf", "bem/outer_skin.surf"):
        assert (subj / rel).is_file(), rel


def test_bem_surfaces_nested(subjects_dir):
    surfs = mne.make_bem_model("fsaverage", ico=None, subjects_dir=subjects_dir,
                               verbose=False)
    # inner skull, outer skull, scalp: same triangulation, radii strictly nested
    by_id = {s["id"]: s for s in surfs}
    FIFF = mne.io.constants.FIFF
    surfs = [by_id[FIFF.FIFFV_BEM_SURF_ID_BRAIN], by_id[FIFF.FIFFV_BEM_SURF_ID_SKULL],
             by_id[FIFF.FIFFV_BEM_SURF_ID_HEAD]]
    center = surfs[0]["rr"].mean(axis=0)
    radii = [np.linalg.norm(s["rr"] - center, axis=1) for s in surfs]
    assert [s["np"] for s in surfs] == [2562] * 3
    assert np.all(radii[1] - radii[0] >= 2e-3 - 1e-6)  # skull >= 2 mm
    assert np.all(radii[2] - radii[1] >= 3e-3 - 1e-6)  # scalp >= 3 mm


def test_default_forward(fwd_default):
    fwd = fwd_default
    G = fwd["sol"]["data"]
    assert G.shape == (90, 1284)
    assert np.isfinite(G).all()
    assert fwd["source_ori"] == mne.io.constants.FIFF.FIFFV_MNE_FIXED_ORI
    assert fwd["src"]._subject == "fsaverage"
    # vertex numbers of ico3 on the real fsaverage are 0..641 in each hemisphere
    for s in fwd["src"]:
        np.testing.assert_array_equal(s["vertno"], np.arange(642))
    G_avg = G - G.mean(axis=0)
    assert np.linalg.matrix_rank(G_avg) >= 89


def test_source_under_cz_peaks_near_cz(fwd_default):
    fwd = fwd_default
    info = fwd["info"]
    ch_pos = np.array([info["chs"][k]["loc"][:3] for k in range(len(info["ch_names"]))])
    # sources in head coordinates
    trans = mne.transforms._get_trans("fsaverage", "mri", "head")[0]
    rr = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    nn = np.concatenate([s["nn"][s["vertno"]] for s in fwd["src"]])
    rr = mne.transforms.apply_trans(trans, rr)
    nn = mne.transforms.apply_trans(trans, nn, move=False)
    cz = ch_pos[info["ch_names"].index("Cz")]
    radial = cz / np.linalg.norm(cz)
    # a source close under Cz whose normal points to the scalp (gyral crown)
    score = np.linalg.norm(rr - cz, axis=1)
    candidates = np.where(np.abs(nn @ radial) > 0.8)[0]
    src_idx = candidates[np.argmin(score[candidates])]
    pot = fwd["sol"]["data"][:, src_idx]
    pot = pot - pot.mean()
    peak = int(np.argmax(np.abs(pot)))
    dist = np.linalg.norm(ch_pos - cz, axis=1)
    neighbours = np.argsort(dist)[:7]  # Cz and its nearest electrodes
    assert peak in neighbours, (info["ch_names"][peak], dist[peak])


def test_forward_cache_identical_and_fast(fwd_default):
    t0 = time.perf_counter()
    fwd2 = make_fsaverage_forward()
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(fwd2["sol"]["data"], fwd_default["sol"]["data"])
    assert elapsed < 10  # generous: the spec asks < 2 s, see benchmarks


def test_custom_montage_forward():
    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info(montage.ch_names, 256.0, "eeg")
    info.set_montage(montage)
    fwd = make_fsaverage_forward(info, use_packaged=True)
    assert fwd["sol"]["data"].shape == (64, 1284)
    assert fwd["info"]["ch_names"] == montage.ch_names
    # second call hits the on-disk cache
    fwd2 = make_fsaverage_forward(info)
    np.testing.assert_array_equal(fwd2["sol"]["data"], fwd["sol"]["data"])


def test_forward_from_a_forwards_info(fwd_default, monkeypatch, tmp_path):
    """A Forward's info lacks most of a measurement's keys (mne 1.13.2 reads ``comps``)."""
    from mne_learned_mm import head

    data_dir = head.get_data_dir
    monkeypatch.setattr(head, "get_data_dir",  # an empty forward cache: it is computed
                        lambda sub=None: tmp_path if sub == "forward" else data_dir(sub))
    info = mne.pick_info(fwd_default["info"], np.arange(0, 90, 6))
    fwd = make_fsaverage_forward(info, spacing="ico1", verbose=False)
    assert fwd["info"]["ch_names"] == info["ch_names"]
    assert np.isfinite(fwd["sol"]["data"]).all() and fwd["sol"]["data"].shape[0] == 15


def test_bad_inputs():
    info = mne.create_info(["MEG1", "MEG2"], 100.0, "mag")
    with pytest.raises(ValueError, match="No EEG channels"):
        make_fsaverage_forward(info)
    info = mne.create_info(["A", "B"], 100.0, "eeg")
    with pytest.raises(ValueError, match="no position"):
        make_fsaverage_forward(info)
    with pytest.raises(ValueError, match="spacing must be"):
        make_fsaverage_forward(spacing="ico9")
    with pytest.raises(ValueError, match="source must be"):
        fetch_fsaverage_head(source="internet")


def test_auto_source_offline_falls_back_to_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBJECTS_DIR", str(tmp_path))
    monkeypatch.setenv("MNE_DATA", str(tmp_path))
    subjects_dir = fetch_fsaverage_head(source="auto")
    assert (subjects_dir / "fsaverage" / "surf" / "lh.white").is_file()


def test_assets_are_package_data():
    assets = resources.files("mne_learned_mm") / "_assets"
    names = {p.name for p in assets.iterdir()}
    assert {"fsaverage_head.tar.gz", "fsaverage-ico3-default-fwd.fif"} <= names


def test_declared_mne_range_holds():
    """setup.cfg's mne range is the real one: floor 1.13 (colin27_1020), ceiling 1.15."""
    import configparser
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).parents[1]
    if not (root / "setup.cfg").is_file():
        pytest.skip("not running from a source checkout")
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    (mne_req,) = [r for r in reqs if r.name == "mne"]
    assert Version(mne.__version__) in mne_req.specifier
    assert Version("1.12.1") not in mne_req.specifier  # no colin27_1020 before 1.13
    assert Version("1.13.0") in mne_req.specifier
    assert Version("1.15.0") not in mne_req.specifier  # matplotlib 3-D stc.plot removed
    assert "colin27_1020" in mne.channels.get_builtin_montages()


# -- digitized montages (issue 19, item 8) ----------------------------------------------
def _digitized(fid_error=None, seed=0):
    """The default montage as digitized on a 10 % larger, rotated, shifted head."""
    from mne_learned_mm.head import _template_head_frame

    info = default_info()
    pos = info.get_montage().get_positions()
    names = list(pos["ch_pos"])
    P = np.array([pos["ch_pos"][n] for n in names])
    scalp, fid = _template_head_frame()
    R = mne.transforms.rotation(0.05, -0.03, 0.08)[:3, :3]

    def tf(p):
        return (1.1 * np.asarray(p)) @ R.T + np.array([0.004, -0.01, 0.02])

    rng = np.random.default_rng(seed)
    hsp = scalp[rng.choice(len(scalp), 300, replace=False)]
    hsp = tf(hsp[hsp[:, 2] > 0.0])  # the upper head, where a digitizer goes
    fid = fid + (0 if fid_error is None else fid_error)
    dig = mne.channels.make_dig_montage(ch_pos=dict(zip(names, tf(P))), nasion=tf(fid[0]),
                                        lpa=tf(fid[1]), rpa=tf(fid[2]), hsp=hsp,
                                        coord_frame="head")
    out = mne.create_info(names, 512.0, "eeg")
    out.set_montage(dig)
    return out, P


def _eeg(info):
    return np.array([ch["loc"][:3] for ch in info["chs"]])


def test_fit_montage_recovers_the_template_positions():
    from mne_learned_mm import fit_fsaverage_montage

    info, truth = _digitized()
    fitted, report = fit_fsaverage_montage(info)
    err = np.linalg.norm(_eeg(fitted) - truth, axis=1) * 1e3
    assert np.median(err) < 2.5 and err.max() < 4.0, err
    assert report["scale"] == pytest.approx(1 / 1.1, rel=0.03)
    assert report["before_median_mm"] > 15 and report["median_mm"] < 4.5
    assert _eeg(info)[0] is not _eeg(fitted)[0] and not np.allclose(_eeg(info), _eeg(fitted))


def test_icp_corrects_misplaced_fiducials():
    """Fiducials digitized 6-8 mm off: the fiducial-only fit over-scales; ICP onto the
    scalp fixes most of it, and the report says so."""
    from mne_learned_mm import fit_fsaverage_montage

    fid_error = np.array([[0, 0.004, 0.008], [-0.007, 0, 0], [0.007, 0, 0]])
    info, truth = _digitized(fid_error)
    only_fid, rep_fid = fit_fsaverage_montage(info, n_iterations=0)
    icp, rep = fit_fsaverage_montage(info)
    err_fid = np.median(np.linalg.norm(_eeg(only_fid) - truth, axis=1)) * 1e3
    err_icp = np.median(np.linalg.norm(_eeg(icp) - truth, axis=1)) * 1e3
    assert err_icp < 0.8 * err_fid, (err_fid, err_icp)  # ICP may slide on the scalp
    assert abs(rep_fid["scale"] * 1.1 - 1) > 0.05  # fiducials alone: 6 % off in scale
    assert abs(rep["scale"] * 1.1 - 1) < 0.015  # ICP: within 1.5 %
    assert rep["median_mm"] < 0.7 * rep["fiducials_median_mm"]
    assert rep["fiducials_median_mm"] == rep_fid["median_mm"]


def test_fit_montage_needs_fiducials():
    from mne_learned_mm import fit_fsaverage_montage

    info = default_info()
    with info._unlock():
        info["dig"] = [d for d in info["dig"]
                       if d["kind"] != mne.io.constants.FIFF.FIFFV_POINT_CARDINAL]
    with pytest.raises(ValueError, match="no nasion, LPA and RPA"):
        fit_fsaverage_montage(info)
    # a template montage carries its fiducials: the fit is then (nearly) the identity
    fitted, report = fit_fsaverage_montage(default_info())
    assert report["scale"] == pytest.approx(1.0, abs=0.03)
    assert report["median_mm"] <= report["before_median_mm"] + 0.5


def test_far_electrodes_warn(monkeypatch):
    from mne_learned_mm import head

    class Computed(Exception):
        pass

    def stop(*args, **kwargs):
        raise Computed

    monkeypatch.setattr(head, "_compute_forward", stop)
    info, _ = _digitized()
    with pytest.warns(RuntimeWarning, match="from the fsaverage scalp.*fit_fsaverage_montage"):
        with pytest.raises(Computed):
            make_fsaverage_forward(info, use_packaged=False, spacing="ico2")
    fitted, _ = head.fit_fsaverage_montage(info)
    with pytest.raises(Computed):  # no warning once fitted (warnings are errors)
        make_fsaverage_forward(fitted, use_packaged=False, spacing="ico2")


def test_conductivity_gets_its_own_bem(fwd_default, monkeypatch, tmp_path):
    from mne_learned_mm import head

    class Computed(Exception):
        pass

    def stop(info, subjects_dir, spacing, source, conductivity):
        raise Computed(conductivity)

    data_dir = head.get_data_dir
    monkeypatch.setattr(head, "get_data_dir",  # an empty forward cache, the usual head
                        lambda sub=None: tmp_path if sub == "forward" else data_dir(sub))
    monkeypatch.setattr(head, "_compute_forward", stop)
    same = make_fsaverage_forward(conductivity=[0.3, 0.006, 0.3], verbose=False)
    assert np.array_equal(same["sol"]["data"], fwd_default["sol"]["data"])  # the default
    with pytest.raises(Computed) as exc:  # never the packaged or a cached default forward
        make_fsaverage_forward(conductivity=(0.3, 0.0042, 0.3), verbose=False)
    assert exc.value.args[0] == (0.3, 0.0042, 0.3)
    assert head._conductivity_tag((0.3, 0.0042, 0.3)) == "-0.3-0.0042-0.3"
    assert head._conductivity_tag(head.CONDUCTIVITY) == ""
    with pytest.raises(ValueError, match="three positive numbers"):
        make_fsaverage_forward(conductivity=(0.3, 0.0))
    with pytest.raises(ValueError, match="three positive numbers"):
        make_fsaverage_forward(conductivity=(0.3, -1, 0.3))
    with pytest.raises(TypeError, match="three numbers"):
        make_fsaverage_forward(conductivity="high")
