"""Jansen-Rit neural mass model and a cached bank of epileptiform spike clips."""

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from mne.utils import logger, verbose
from scipy.signal import find_peaks

from .._config import get_data_dir
from .waveforms import PatchConfig, _jitter, _signs

_BANK_VERSION = 1


@dataclass
class NMMConfig(PatchConfig):
    """Jansen-Rit spike simulation (after the authors' TVB set-up).

    Model parameters follow Jansen & Rit (1995) in s, mV and s⁻¹; the
    pyramidal PSP ``y1 - y2`` (mV) is the output. The external input is
    ``p(t) = p_mean + p_sigma ξ(t)`` with ``ξ`` Gaussian white noise. With the
    background ``A = 3.25`` and ``p_mean ≈ 220`` the model oscillates in the
    alpha band; raising ``A`` to ``A_active`` with the authors' ``p_mean``
    (TVB ``mu = 0.087 ms⁻¹``) gives isolated epileptiform spikes.

    Parameters
    ----------
    n_patches, order, margin, amplitude, random_sign
        See :class:`PatchConfig`. ``amplitude`` is the spike peak in A·m.
    amplitude_dev : tuple of float
        Relative amplitude deviation per sample, then per patch.
    A : float
        Background excitatory gain (mV).
    A_active : float
        Excitatory gain of the spiking (active) region (mV).
    B, a, b, C, v0, e0, r : float
        Inhibitory gain (mV), inverse time constants (s⁻¹), connectivity
        constant, sigmoid threshold (mV), half maximal firing rate (s⁻¹) and
        sigmoid slope (mV⁻¹).
    p_mean : float
        Mean external input (s⁻¹).
    p_sigma : float
        Input noise intensity (s⁻¹ · s^½).
    dt : float
        Integration step in s.
    method : "heun" | "euler"
        Stochastic Heun or Euler-Maruyama.
    sfreq : float
        Sampling frequency of the clips (Hz); ``1 / dt`` must be a multiple.
    n_times : int
        Clip length in samples.
    spike_threshold : float
        Spike peaks exceed the region's median by this much (mV).
    spike_position : tuple of float
        Range of the spike peak position within a clip (fraction of length).
    isolation : float
        Other spikes peak at least this long (s) before or after a clip.
    n_clips : int
        Number of clips in the bank.
    n_regions : int
        Regions integrated in parallel when generating the bank.
    chunk_duration : float
        Seconds simulated per chunk while filling the bank.
    transient : float
        Seconds discarded at the start.
    seed : int
        Seed of the bank generation.
    """

    amplitude_dev: tuple = (0.5, 0.7)
    A: float = 3.25
    A_active: float = 3.6
    B: float = 22.0
    a: float = 100.0
    b: float = 50.0
    C: float = 135.0
    v0: float = 6.0
    e0: float = 2.5
    r: float = 0.56
    p_mean: float = 87.0
    p_sigma: float = 3.0
    dt: float = 5e-4
    method: str = "heun"
    sfreq: float = 500.0
    n_times: int = 500
    spike_threshold: float = 5.0
    spike_position: tuple = (0.3, 0.7)
    isolation: float = 0.15
    n_clips: int = 300
    n_regions: int = 100
    chunk_duration: float = 10.0
    transient: float = 1.0
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.method not in ("heun", "euler"):
            raise ValueError(f'method must be "heun" or "euler", got {self.method!r}')
        ratio = 1.0 / (self.sfreq * self.dt)
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ValueError(f"1 / dt must be a multiple of sfreq, got dt={self.dt}, "
                             f"sfreq={self.sfreq}")

    @property
    def tmin(self):
        """Time of the first sample in s."""
        return 0.0


# Fields that change the spike bank (the others only change how it is used).
_BANK_FIELDS = ("A_active", "B", "a", "b", "C", "v0", "e0", "r", "p_mean", "p_sigma",
                "dt", "method", "sfreq", "n_times", "spike_threshold", "spike_position",
                "isolation", "n_clips", "n_regions", "chunk_duration", "transient", "seed")


def sigmoid(v, e0=2.5, v0=6.0, r=0.56):
    """Jansen-Rit potential-to-rate sigmoid ``2 e0 / (1 + exp(r (v0 - v)))``.

    Parameters
    ----------
    v : array
        Membrane potential (mV).
    e0, v0, r : float
        Half maximal firing rate (s⁻¹), threshold (mV), slope (mV⁻¹).

    Returns
    -------
    rate : array
        Firing rate (s⁻¹).
    """
    return 2.0 * e0 / (1.0 + np.exp(r * (v0 - v)))


def _jansen_rit_drift(y, A, p, prm, out):
    """Right-hand side of the six Jansen-Rit equations (in place)."""
    a, b, B, C = prm["a"], prm["b"], prm["B"], prm["C"]
    sig = (prm["e0"], prm["v0"], prm["r"])
    out[0:3] = y[3:6]
    out[3] = A * a * sigmoid(y[1] - y[2], *sig) - 2.0 * a * y[3] - a * a * y[0]
    out[4] = A * a * (p + 0.8 * C * sigmoid(C * y[0], *sig)) - 2.0 * a * y[4] - a * a * y[1]
    out[5] = B * b * 0.25 * C * sigmoid(0.25 * C * y[0], *sig) - 2.0 * b * y[5] - b * b * y[2]
    return out


def jansen_rit(n_steps, A=3.25, *, config=None, rng=None, y0=None, decim=1,
               return_state=False):
    """Integrate independent stochastic Jansen-Rit columns (vectorised).

    Parameters
    ----------
    n_steps : int
        Number of integration steps of ``config.dt``.
    A : float | array, shape (n_regions,)
        Excitatory gain per region (mV); its length sets ``n_regions``.
    config : NMMConfig | None
        Model parameters (``A`` and ``A_active`` are ignored here).
    rng : numpy.random.Generator | int | None
        Random generator for the input noise.
    y0 : array, shape (6, n_regions) | None
        Initial state (zeros by default).
    decim : int
        Keep every ``decim``-th output sample.
    return_state : bool
        Also return the final state.

    Returns
    -------
    out : array, shape (n_steps // decim, n_regions)
        Pyramidal PSP ``y1 - y2`` in mV.
    state : array, shape (6, n_regions)
        Only if ``return_state``.
    """
    config = NMMConfig() if config is None else config
    rng = np.random.default_rng(rng)
    A = np.atleast_1d(np.asarray(A, dtype=np.float64))
    prm = {k: getattr(config, k) for k in ("a", "b", "B", "C", "e0", "v0", "r")}
    n = len(A)
    y = np.zeros((6, n)) if y0 is None else np.array(y0, dtype=np.float64)
    dt, p = config.dt, config.p_mean
    noise_gain = A * config.a * config.p_sigma * np.sqrt(dt)
    f1, f2, y_pred = np.empty((6, n)), np.empty((6, n)), np.empty((6, n))
    out = np.empty((n_steps // decim, n), dtype=np.float32)
    heun = config.method == "heun"
    for k in range(n_steps):
        kick = noise_gain * rng.standard_normal(n)
        _jansen_rit_drift(y, A, p, prm, f1)
        if heun:
            np.multiply(f1, dt, out=y_pred)
            y_pred += y
            y_pred[4] += kick
            _jansen_rit_drift(y_pred, A, p, prm, f2)
            f1 += f2
            f1 *= 0.5 * dt
        else:
            f1 *= dt
        y += f1
        y[4] += kick
        if (k + 1) % decim == 0:
            out[(k + 1) // decim - 1] = y[1] - y[2]
    return (out, y) if return_state else out


def detect_spikes(x, sfreq, threshold=5.0, min_interval=0.1):
    """Peaks of a Jansen-Rit output that rise ``threshold`` above its median.

    Parameters
    ----------
    x : array, shape (n_times,)
        Output ``y1 - y2`` (mV).
    sfreq : float
    threshold : float
        Height above the median (mV).
    min_interval : float
        Minimal distance between spikes (s).

    Returns
    -------
    peaks : array of int
        Sample indices of the spike peaks.
    """
    peaks, _ = find_peaks(x, height=np.median(x) + threshold,
                          distance=max(1, int(round(min_interval * sfreq))))
    return peaks


def isolated_clips(x, peaks, n_times, position, rng, guard=0):
    """Clips of ``n_times`` samples each holding exactly one spike.

    Parameters
    ----------
    x : array, shape (n_total,)
    peaks : array of int
        Spike peaks in ``x``.
    n_times : int
        Clip length.
    position : tuple of float
        Range of the spike position in the clip (fraction of ``n_times``).
    rng : numpy.random.Generator
    guard : int
        Other spikes peak at least this many samples outside the clip, so
        their rise and decay stay out of it.

    Returns
    -------
    clips : list of array, shape (n_times,)
        Baseline (median) removed, scaled to a unit peak.
    """
    clips = []
    big = 10 * (len(x) + n_times)
    bounds = np.concatenate([[-big], peaks, [big]]).astype(np.int64)
    for j, pk in enumerate(peaks.astype(np.int64)):
        # offset of the peak in the clip: inside ``position``, clip inside x,
        # previous spike ``guard`` before the clip, next one ``guard`` after it
        lo = max(int(round(position[0] * n_times)), pk + n_times - len(x),
                 pk + n_times + guard - bounds[j + 2])
        hi = min(int(round(position[1] * n_times)), pk, pk - bounds[j] - 1 - guard)
        if lo > hi:
            continue
        start = pk - int(rng.integers(lo, hi + 1))
        clip = x[start:start + n_times].astype(np.float64)
        clip -= np.median(clip)
        clips.append(clip / clip[pk - start])
    return clips


def _bank_key(config):
    params = {k: getattr(config, k) for k in _BANK_FIELDS}
    params["version"] = _BANK_VERSION
    blob = json.dumps(params, sort_keys=True, default=list).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


@verbose
def make_spike_bank(config=None, *, verbose=None):
    """Simulate Jansen-Rit regions with raised ``A`` and collect spike clips.

    Parameters
    ----------
    config : NMMConfig | None
    %(verbose)s

    Returns
    -------
    clips : array, shape (n_clips, n_times)
        Isolated spikes, median baseline removed, unit positive peak.
    """
    config = NMMConfig() if config is None else config
    rng = np.random.default_rng([config.seed, _BANK_VERSION])
    decim = int(round(1.0 / (config.dt * config.sfreq)))
    A = np.full(config.n_regions, config.A_active)
    _, state = jansen_rit(int(round(config.transient / config.dt)), A, config=config,
                          rng=rng, decim=decim, return_state=True)
    clips = []
    for _ in range(100):
        # the PSP kernels low-pass the output well below sfreq / 2: plain decimation
        out, state = jansen_rit(int(round(config.chunk_duration / config.dt)), A,
                                config=config, rng=rng, y0=state, decim=decim,
                                return_state=True)
        for x in out.T:
            peaks = detect_spikes(x, config.sfreq, config.spike_threshold)
            clips += isolated_clips(x, peaks, config.n_times, config.spike_position, rng,
                                    guard=int(round(config.isolation * config.sfreq)))
        logger.info(f"Spike bank: {len(clips)} / {config.n_clips} clips")
        if len(clips) >= config.n_clips:
            break
    else:
        raise RuntimeError(
            f"Only {len(clips)} isolated spikes found; check A_active, p_mean and p_sigma.")
    return np.array(clips[:config.n_clips], dtype=np.float32)


@verbose
def load_spike_bank(config=None, *, cache_dir=None, verbose=None):
    """Spike-clip bank, generated once and cached on disk.

    The file name holds a hash of the parameters that affect the bank, so a
    changed configuration gets its own file.

    Parameters
    ----------
    config : NMMConfig | None
    cache_dir : path-like | None
        Where to keep the bank; ``None`` uses ``MNE_LEARNED_MM_DATA`` or
        ``<MNE data dir>/mne_learned_mm`` (sub-folder ``nmm``).
    %(verbose)s

    Returns
    -------
    clips : array, shape (n_clips, n_times)
    """
    from pathlib import Path

    config = NMMConfig() if config is None else config
    folder = get_data_dir("nmm") if cache_dir is None else Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fname = folder / f"spike_bank_{_bank_key(config)}.npz"
    if fname.is_file():
        logger.info(f"Reading the cached spike bank {fname}")
        with np.load(fname) as npz:
            return npz["clips"]
    logger.info("Generating the Jansen-Rit spike bank (once, then cached)")
    clips = make_spike_bank(config)
    params = {k: getattr(config, k) for k in _BANK_FIELDS}
    tmp = fname.with_name(fname.stem + f".{np.random.default_rng().integers(1 << 30)}.tmp.npz")
    np.savez(tmp, clips=clips, config=json.dumps(params, default=list))
    tmp.replace(fname)  # atomic: safe with concurrent processes
    return clips


def nmm_waveforms(rng, n_patches, bank, config):
    """Draw the patch time courses of one NMM sample.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_patches : int
    bank : array, shape (n_clips, n_times)
        Unit-peak spike clips.
    config : NMMConfig

    Returns
    -------
    waveforms : array, shape (n_patches, n_times)
        In A·m.
    """
    amp = _jitter(rng, config.amplitude, config.amplitude_dev[0])
    amps = _jitter(rng, amp, config.amplitude_dev[1], n_patches)
    amps = amps * _signs(rng, n_patches, config.random_sign)
    clips = bank[rng.integers(len(bank), size=n_patches)]
    return amps[:, None] * clips
