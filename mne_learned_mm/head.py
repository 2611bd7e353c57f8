"""The fsaverage template head: embedded assets, downloads and forward models."""

import hashlib
import os
import tarfile
from importlib import resources
from pathlib import Path

import mne
import numpy as np
from mne.utils import logger, verbose

from ._config import get_data_dir

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


def _bem_solution(subjects_dir, source):
    bem_dir = Path(subjects_dir) / SUBJECT / "bem"
    if (bem_dir / _DOWNLOAD_BEM).is_file() and source != "embedded":
        return bem_dir / _DOWNLOAD_BEM
    fname = bem_dir / _EMBEDDED_BEM
    if not fname.is_file():
        logger.info("Computing the three-layer BEM solution (once, then cached)")
        model = mne.make_bem_model(SUBJECT, ico=None, conductivity=CONDUCTIVITY,
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
    info = mne.pick_info(info, picks)
    with info._unlock():
        info["projs"] = []
        info["bads"] = []
    return info


@verbose
def make_fsaverage_forward(info=None, *, spacing="ico3", source="embedded",
                           use_packaged=True, fixed=True, verbose=None):
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
    if not isinstance(fixed, bool):
        raise TypeError(f"fixed must be a bool, got {type(fixed).__name__}")
    read = _read_fixed if fixed else _read_surf_ori
    info = default_info() if info is None else info
    picks = _check_eeg_info(info)
    subjects_dir = fetch_fsaverage_head(source=source)
    bem_tag = "download" if _complete_fsaverage(subjects_dir) and source != "embedded" \
        else "embedded-ico4"
    key = _forward_key(info, picks, spacing, bem_tag)
    packaged = _asset(DEFAULT_FWD_FNAME)
    default_key = _forward_key(default_info(), np.arange(90), "ico3", "embedded-ico4")
    if use_packaged and key == default_key and packaged.is_file():
        with resources.as_file(packaged) as path:
            return read(path)
    fname = get_data_dir("forward") / f"{SUBJECT}-{spacing}-{key}-fwd.fif"
    if fname.is_file():
        logger.info(f"Reading cached forward {fname.name}")
        return read(fname)
    fwd = _compute_forward(_eeg_info(info, picks), subjects_dir, spacing, source)
    mne.write_forward_solution(fname, fwd, overwrite=True, verbose=False)
    return read(fname)  # identical to what later cached calls return


def _to_fixed(fwd):
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                        use_cps=True, verbose=False)


def _read_fixed(fname):
    return _to_fixed(mne.read_forward_solution(fname, verbose=False))


def _read_surf_ori(fname):
    return mne.convert_forward_solution(mne.read_forward_solution(fname, verbose=False),
                                        surf_ori=True, use_cps=True, verbose=False)


def _compute_forward(info, subjects_dir, spacing, source):
    src = _source_space(subjects_dir, spacing)
    bem = _bem_solution(subjects_dir, source)
    logger.info(f"Computing the EEG forward for {len(info['ch_names'])} channels, "
                f"{spacing} ({sum(s['nuse'] for s in src)} sources)")
    return mne.make_forward_solution(info, trans=SUBJECT, src=src, bem=bem, meg=False,
                                     eeg=True, mindist=0.0, verbose=False)
