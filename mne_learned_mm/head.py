"""The fsaverage template head: embedded assets, downloads and forward models."""

import hashlib
import os
import tarfile
from functools import partial
from importlib import resources
from pathlib import Path

import mne
import numpy as np
from mne.utils import logger, verbose

from ._config import get_data_dir
from ._forward import read_forward

SUBJECT = "fsaverage"
CONDUCTIVITY = (0.3, 0.006, 0.3)
DEFAULT_MONTAGE = "colin27_1020"
EXCLUDED_CHANNELS = ("T3", "T4", "T5", "T6")
DEFAULT_SFREQ = 512.0
DEFAULT_FWD_FNAME = "fsaverage-ico3-default-fwd.fif"
_ARCHIVE = "fsaverage_head.tar.gz"
_EMBEDDED_BEM = "fsaverage-ico4-3layer-bem-sol.fif"
_DOWNLOAD_BEM = "fsaverage-5120-5120-5120-bem-sol.fif"
_SPACINGS = tuple(f"ico{k}" for k in range(1, 6)) + tuple(f"oct{k}" for k in range(1, 6))


def _asset(name):
    return resources.files("mne_learned_mm") / "_assets" / name


def _file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_info(sfreq=DEFAULT_SFREQ):
    """Measurement info of the default 90-channel montage.

    MNE's standard 10-20 set (``colin27_1020``, called ``standard_1020`` before
    MNE 1.13) without T3, T4, T5 and T6, as in the source paper.

    Parameters
    ----------
    sfreq : float
        Sampling frequency in Hz.

    Returns
    -------
    info : mne.Info
        EEG-only info with the montage set.
    """
    montage = mne.channels.make_standard_montage(DEFAULT_MONTAGE)
    ch_names = [ch for ch in montage.ch_names if ch not in EXCLUDED_CHANNELS]
    info = mne.create_info(ch_names, sfreq, "eeg")
    info.set_montage(montage)
    return info


def _complete_fsaverage(subjects_dir):
    subj = Path(subjects_dir) / SUBJECT
    needed = ["surf/lh.white", "surf/rh.white", "surf/lh.sphere", "surf/rh.sphere",
              f"bem/{_DOWNLOAD_BEM}"]
    return all((subj / rel).is_file() for rel in needed)


def _local_fsaverage_dirs():
    candidates = []
    for key in ("SUBJECTS_DIR",):
        value = mne.get_config(key, None)
        if value:
            candidates.append(Path(value))
    mne_data = mne.get_config("MNE_DATA", None) or os.path.join(
        os.path.expanduser("~"), "mne_data")
    candidates.append(Path(mne_data) / "MNE-fsaverage-data")
    return [c for c in candidates if _complete_fsaverage(c)]


def _unpack_embedded(subjects_dir):
    archive = _asset(_ARCHIVE)
    with resources.as_file(archive) as path:
        digest = _file_sha256(path)
        stamp = Path(subjects_dir) / SUBJECT / ".embedded-sha256"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        logger.info(f"Unpacking the embedded fsaverage head into {subjects_dir}")
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(subjects_dir, filter="data")
    stamp.write_text(digest)


@verbose
def fetch_fsaverage_head(subjects_dir=None, *, source="auto", verbose=None):
    """Get a subjects directory holding the ``fsaverage`` template.

    This is the ``subjects_dir`` to plot estimates with, offline and without
    setting ``SUBJECTS_DIR``:
    ``stc.plot(subjects_dir=fetch_fsaverage_head(), backend="matplotlib")``
    (the embedded head has the pial, white, inflated and sphere surfaces and
    the curvature of fsaverage5, on which the ico3 source vertices lie).

    Parameters
    ----------
    subjects_dir : path-like | None
        Where to put the subject. ``None`` uses the package cache for the
        embedded head and MNE's default for the download.
    source : "auto" | "embedded" | "download"
        ``"embedded"`` unpacks the head model shipped in the package (works
        offline: fsaverage5 cortex, a derived three-layer BEM at ico4).
        ``"download"`` fetches the full template with its BEM through
        :func:`mne.datasets.fetch_fsaverage` (needs internet).
        ``"auto"`` uses a complete local fsaverage if one exists
        (``SUBJECTS_DIR`` or ``MNE_DATA``) and otherwise the embedded one; it
        never touches the network.
    %(verbose)s

    Returns
    -------
    subjects_dir : pathlib.Path
        Directory containing ``fsaverage/``.
    """
    if source not in ("auto", "embedded", "download"):
        raise ValueError(
            f'source must be "auto", "embedded" or "download", got {source!r}')
    if source == "auto":
        found = _local_fsaverage_dirs()
        if subjects_dir is None and found:
            logger.info(f"Using the local fsaverage in {found[0]}")
            return found[0]
        source = "embedded"
    if source == "download":
        fs_dir = mne.datasets.fetch_fsaverage(subjects_dir=subjects_dir, verbose=verbose)
        return Path(fs_dir).parent
    subjects_dir = Path(subjects_dir) if subjects_dir else get_data_dir("subjects")
    subjects_dir.mkdir(parents=True, exist_ok=True)
    _unpack_embedded(subjects_dir)
    return subjects_dir


def _check_spacing(spacing):
    if spacing not in _SPACINGS:
        raise ValueError(
            f"spacing must be one of {', '.join(_SPACINGS)}, got {spacing!r}. "
            "The embedded cortex is fsaverage5 (ico5), so finer spacings are "
            'not available; use source="download" for the full template.')


def _check_eeg_info(info):
    picks = mne.pick_types(info, meg=False, eeg=True, exclude=())
    if len(picks) == 0:
        raise ValueError(
            "No EEG channels found in info. make_fsaverage_forward builds EEG "
            "forward models only: pass an info with EEG channels and a montage.")
    locs = np.array([info["chs"][k]["loc"][:3] for k in picks])
    bad = ~np.isfinite(locs).all(axis=1) | (np.linalg.norm(locs, axis=1) == 0)
    if bad.any():
        names = [info["ch_names"][k] for k in picks[bad]]
        raise ValueError(
            f"{len(names)} EEG channel(s) have no position: {names[:10]}. "
            "Set a montage first, e.g. info.set_montage('standard_1005') or "
            "raw.set_montage(...).")
    return picks


def _forward_key(info, picks, spacing, bem_tag):
    h = hashlib.sha1()
    for k in picks:
        h.update(info["ch_names"][k].encode())
        h.update(np.round(info["chs"][k]["loc"][:3], 6).tobytes())
    h.update(f"{spacing}|{bem_tag}|{mne.__version__.split('.')[0]}".encode())
    return h.hexdigest()[:16]


def _conductivity_tag(conductivity):
    return "" if tuple(conductivity) == CONDUCTIVITY else "-" + "-".join(
        f"{c:g}" for c in conductivity)


def _check_conductivity(conductivity):
    if conductivity is None:
        return CONDUCTIVITY
    try:
        conductivity = tuple(float(c) for c in conductivity)
    except (TypeError, ValueError):
        raise TypeError(f"conductivity must be three numbers (brain, skull, scalp) in S/m, "
                        f"got {conductivity!r}") from None
    if len(conductivity) != 3 or not all(np.isfinite(c) and c > 0 for c in conductivity):
        raise ValueError(f"conductivity must be three positive numbers (brain, skull, scalp) "
                         f"in S/m, got {conductivity}")
    return conductivity


def _bem_solution(subjects_dir, source, conductivity=CONDUCTIVITY):
    bem_dir = Path(subjects_dir) / SUBJECT / "bem"
    tag = _conductivity_tag(conductivity)
    if (bem_dir / _DOWNLOAD_BEM).is_file() and source != "embedded" and not tag:
        return bem_dir / _DOWNLOAD_BEM
    fname = bem_dir / _EMBEDDED_BEM.replace("-bem-sol", f"{tag}-bem-sol")
    if not fname.is_file():
        logger.info("Computing the three-layer BEM solution (once, then cached)")
        model = mne.make_bem_model(SUBJECT, ico=None, conductivity=conductivity,
                                   subjects_dir=subjects_dir, verbose=False)
        sol = mne.make_bem_solution(model, verbose=False)
        mne.write_bem_solution(fname, sol, overwrite=True, verbose=False)
    return fname


def _source_space(subjects_dir, spacing):
    fname = Path(subjects_dir) / SUBJECT / "bem" / f"{SUBJECT}-{spacing}-src.fif"
    if fname.is_file():
        return mne.read_source_spaces(fname, verbose=False)
    src = mne.setup_source_space(SUBJECT, spacing=spacing, subjects_dir=subjects_dir,
                                 add_dist=False, verbose=False)
    mne.write_source_spaces(fname, src, overwrite=True, verbose=False)
    return src


def _eeg_info(info, picks):
    """A complete measurement info of the picked EEG channels and their positions alone:
    what :func:`mne.make_forward_solution` reads, also from the partial info a
    :class:`mne.Forward` carries (no projectors, no bads; the rate is not used)."""
    chs = [info["chs"][pick] for pick in picks]
    out = mne.create_info([ch["ch_name"] for ch in chs], 1000.0, "eeg")
    with out._unlock():
        for new, ch in zip(out["chs"], chs):
            new["loc"] = ch["loc"].copy()
            new["coord_frame"] = ch["coord_frame"]
    return out


@verbose
def make_fsaverage_forward(info=None, *, spacing="ico3", source="embedded",
                           use_packaged=True, fixed=True, conductivity=None, verbose=None):
    """EEG forward model on the fsaverage template (fixed orientation by default).

    Parameters
    ----------
    info : mne.Info | None
        Measurement info with EEG channel positions. ``None`` uses
        :func:`default_info` (90 channels of the standard 10-20 set).
    spacing : str
        Source spacing, ``"ico1"``-``"ico5"`` or ``"oct1"``-``"oct5"``. All
        sources are kept (``mindist=0``); orientation is fixed normal to the
        cortex.
    source : "embedded" | "auto" | "download"
        Which fsaverage to use, see :func:`fetch_fsaverage_head`. The
        shipped pretrained model was trained on the embedded head.
    use_packaged : bool
        Use the precomputed default forward shipped in the package when
        ``info`` matches the default montage (no BEM computation).
    fixed : bool
        ``True``: fixed orientation, normal to the cortex (what the learned
        solver uses). ``False``: free orientation in surface coordinates
        (``surf_ori=True``), which :func:`mne.minimum_norm.make_inverse_operator`
        needs for ``loose`` and ``depth`` weighting; the learned solver
        accepts it too (it takes the normal component), so one forward serves
        dSPM/sLORETA/eLORETA and the learned solver.
    conductivity : tuple of float | None
        Brain, skull and scalp conductivities (S/m) of the three-layer BEM,
        as in :func:`mne.make_bem_model`; ``None`` is the default
        ``(0.3, 0.006, 0.3)``. Another value computes its own BEM solution
        from the head's surfaces (once, then cached), e.g. to see how a
        solver copes with an uncertain skull conductivity.
    %(verbose)s

    Returns
    -------
    fwd : mne.Forward
        Forward with ``n_channels`` EEG channels, fixed- or free-orientation
        sources.

    Notes
    -----
    BEM solutions and forwards are cached on disk (keyed by channel names and
    positions, spacing and head model), so a second call only reads a file.
    """
    _check_spacing(spacing)
    conductivity = _check_conductivity(conductivity)
    if not isinstance(fixed, bool):
        raise TypeError(f"fixed must be a bool, got {type(fixed).__name__}")
    read = partial(read_forward, fixed=fixed)
    info = default_info() if info is None else info
    picks = _check_eeg_info(info)
    subjects_dir = fetch_fsaverage_head(source=source)
    bem_tag = "download" if _complete_fsaverage(subjects_dir) and source != "embedded" \
        else "embedded-ico4"
    bem_tag += _conductivity_tag(conductivity)
    key = _forward_key(info, picks, spacing, bem_tag)
    packaged = _asset(DEFAULT_FWD_FNAME)
    default_key = _forward_key(default_info(), np.arange(90), "ico3", "embedded-ico4")
    if use_packaged and key == default_key and packaged.is_file():
        with resources.as_file(packaged) as path:
            return read(path)
    _warn_far_from_scalp(info, picks)
    fname = get_data_dir("forward") / f"{SUBJECT}-{spacing}-{key}-fwd.fif"
    if fname.is_file():
        logger.info(f"Reading cached forward {fname.name}")
        return read(fname)
    fwd = _compute_forward(_eeg_info(info, picks), subjects_dir, spacing, source, conductivity)
    mne.write_forward_solution(fname, fwd, overwrite=True, verbose=False)
    return read(fname)  # identical to what later cached calls return


def _compute_forward(info, subjects_dir, spacing, source, conductivity=CONDUCTIVITY):
    src = _source_space(subjects_dir, spacing)
    bem = _bem_solution(subjects_dir, source, conductivity)
    logger.info(f"Computing the EEG forward for {len(info['ch_names'])} channels, "
                f"{spacing} ({sum(s['nuse'] for s in src)} sources)")
    return mne.make_forward_solution(info, trans=SUBJECT, src=src, bem=bem, meg=False,
                                     eeg=True, mindist=0.0, verbose=False)


# -- digitized montages on the template head -------------------------------------------
#: Electrodes farther than this from the template scalp (median over electrodes, mm)
#: trigger a warning in :func:`make_fsaverage_forward`; the default montage is at 3.9 mm.
SCALP_WARN_MEDIAN_MM = 8.0
#: ... or any electrode farther than this (the default montage's farthest is 16 mm).
SCALP_WARN_MAX_MM = 25.0


def _fsaverage_trans():
    fname = Path(mne.__file__).parent / "data" / "fsaverage" / "fsaverage-trans.fif"
    return mne.read_trans(fname, verbose=False)


def _template_head_frame():
    """Scalp vertices and fiducials of fsaverage in its head frame (m)."""
    subjects_dir = fetch_fsaverage_head(source="embedded", verbose=False)
    rr, _ = mne.read_surface(Path(subjects_dir) / SUBJECT / "bem" / "outer_skin.surf",
                             verbose=False)
    mri_head = mne.transforms.invert_transform(_fsaverage_trans())
    scalp = mne.transforms.apply_trans(mri_head, rr / 1000.0)
    fids = mne.coreg.get_mni_fiducials(SUBJECT, subjects_dir=subjects_dir, verbose=False)
    fid = {f["ident"]: mne.transforms.apply_trans(mri_head, f["r"]) for f in fids}
    F = mne.io.constants.FIFF
    return scalp, np.array([fid[F.FIFFV_POINT_NASION], fid[F.FIFFV_POINT_LPA],
                            fid[F.FIFFV_POINT_RPA]])


def _scalp_distance(points, scalp):
    from scipy.spatial import cKDTree

    return cKDTree(scalp).query(points)[0]


def _similarity(src, dst, weights=None, scale=True):
    """Least-squares ``dst ≈ s R src + t`` (Umeyama); returns s, R, t."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    A, B = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd((B * w[:, None]).T @ A)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (w @ (A ** 2).sum(1))) if scale else 1.0
    return s, R, mu_d - s * R @ mu_s


def _eeg_positions(info):
    picks = _check_eeg_info(info)
    return picks, np.array([info["chs"][k]["loc"][:3] for k in picks])


def _dig_points(info, kind):
    F = mne.io.constants.FIFF
    return [d for d in (info["dig"] or []) if d["kind"] == kind
            and d["coord_frame"] == F.FIFFV_COORD_HEAD]


@verbose
def fit_fsaverage_montage(info, *, n_iterations=30, nasion_weight=2.0, scale=True,
                          verbose=None):
    """Fit digitized electrode positions to the fsaverage template head.

    As :class:`mne.coreg.Coregistration` does for an MRI: a similarity
    transform (rotation, translation and, with ``scale``, one uniform scale)
    is fitted to the fiducials (nasion, LPA, RPA), then refined by ICP of the
    electrodes and head-shape points onto the template scalp (fiducials kept
    with their weights). The electrodes are then moved by that transform, so
    :func:`make_fsaverage_forward` gets positions on the template's scalp.

    Parameters
    ----------
    info : mne.Info
        Info with a digitized montage in head coordinates: EEG positions and
        the three fiducials (e.g. ``raw.set_montage(mne.channels.read_dig_fif(...))``
        or a recording with its digitization). Extra head-shape points are used
        by the ICP when present.
    n_iterations : int
        ICP iterations (0: fiducials only).
    nasion_weight : float
        Weight of the nasion in the ICP (the LPA and RPA weigh 1, as every
        electrode and head-shape point).
    scale : bool
        Fit a uniform scale (head size) as well.
    %(verbose)s

    Returns
    -------
    info : mne.Info
        A copy whose EEG positions (and fiducials, head-shape points) are those
        of the template head.
    report : dict
        ``scale`` (template size / subject size), ``rotation_deg``,
        ``translation_mm``, and the electrodes' distances to the template
        scalp in mm: ``median_mm``/``max_mm`` after the fit and
        ``fiducials_median_mm``/``fiducials_max_mm`` after the fiducial fit
        alone, and ``before_median_mm``/``before_max_mm`` without any fit.
    """
    F = mne.io.constants.FIFF
    picks, eeg = _eeg_positions(info)
    fid = {d["ident"]: d["r"] for d in _dig_points(info, F.FIFFV_POINT_CARDINAL)}
    needed = (F.FIFFV_POINT_NASION, F.FIFFV_POINT_LPA, F.FIFFV_POINT_RPA)
    if not all(k in fid for k in needed):
        raise ValueError(
            "The montage has no nasion, LPA and RPA in head coordinates: a digitized "
            "montage is needed (e.g. mne.channels.read_dig_fif, read_dig_polhemus_isotrak, "
            "or make_dig_montage(..., nasion=, lpa=, rpa=)). A template montage "
            "(make_standard_montage) needs no fit.")
    if n_iterations < 0:
        raise ValueError(f"n_iterations must be >= 0, got {n_iterations}")
    subj_fid = np.array([fid[k] for k in needed])
    hsp = np.array([d["r"] for d in _dig_points(info, F.FIFFV_POINT_EXTRA)]).reshape(-1, 3)
    scalp, tmpl_fid = _template_head_frame()
    before = _scalp_distance(eeg, scalp)
    s, R, t = _similarity(subj_fid, tmpl_fid, scale=scale)
    after_fid = _scalp_distance(s * eeg @ R.T + t, scalp)
    points = np.concatenate([eeg, hsp])
    w_fid = np.array([nasion_weight, 1.0, 1.0])
    for _ in range(n_iterations):
        moved = s * points @ R.T + t
        from scipy.spatial import cKDTree

        target = scalp[cKDTree(scalp).query(moved)[1]]
        s, R, t = _similarity(np.concatenate([points, subj_fid]),
                              np.concatenate([target, tmpl_fid]),
                              np.concatenate([np.ones(len(points)), w_fid]), scale=scale)

    def move(p):
        return s * np.asarray(p) @ R.T + t

    out = info.copy()
    with out._unlock():
        for k, r in zip(picks, move(eeg)):
            out["chs"][k]["loc"][:3] = r
            ref = out["chs"][k]["loc"][3:6]
            if np.any(ref):
                out["chs"][k]["loc"][3:6] = move(ref)
        for d in out["dig"] or []:
            if d["coord_frame"] == F.FIFFV_COORD_HEAD:
                d["r"] = move(d["r"])
    after = _scalp_distance(move(eeg), scalp)
    angle = np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))
    report = dict(scale=float(s), rotation_deg=float(angle),
                  translation_mm=float(np.linalg.norm(t) * 1e3),
                  median_mm=float(np.median(after) * 1e3), max_mm=float(after.max() * 1e3),
                  fiducials_median_mm=float(np.median(after_fid) * 1e3),
                  fiducials_max_mm=float(after_fid.max() * 1e3),
                  before_median_mm=float(np.median(before) * 1e3),
                  before_max_mm=float(before.max() * 1e3))
    logger.info(f"Fitted the montage to fsaverage: scale {s:.3f}, rotation {angle:.1f}°, "
                f"electrodes {report['median_mm']:.1f} mm (median), {report['max_mm']:.1f} "
                f"mm (max) from the template scalp (fiducials only: "
                f"{report['fiducials_median_mm']:.1f} / {report['fiducials_max_mm']:.1f} mm; "
                f"no fit: {report['before_median_mm']:.1f} / {report['before_max_mm']:.1f})")
    return out, report


def _warn_far_from_scalp(info, picks):
    scalp, _ = _template_head_frame()
    eeg = np.array([info["chs"][k]["loc"][:3] for k in picks])
    d = _scalp_distance(eeg, scalp) * 1e3
    if np.median(d) > SCALP_WARN_MEDIAN_MM or d.max() > SCALP_WARN_MAX_MM:
        far = int((d > 10).sum())
        mne.utils.warn(
            f"{far} of {len(d)} EEG electrodes lie more than 10 mm from the fsaverage "
            f"scalp (median {np.median(d):.1f} mm, max {d.max():.1f} mm); the forward "
            "projects them onto the scalp. For digitized positions, fit them to the "
            "template first: info, report = mne_learned_mm.fit_fsaverage_montage(info).")
