"""On-the-fly torch datasets of simulated EEG, splits and an ``.npz`` writer/reader."""

import json
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
from mne.utils import fill_doc, logger, verbose

from .geometry import SourceGeometry
from .leadfield import make_info, make_leadfield
from .nmm import NMMConfig, load_spike_bank, nmm_waveforms
from .noise import NoiseConfig
from .sources import simulate_sample
from .waveforms import EvokedConfig, SereegaConfig, evoked_waveforms, sereega_waveforms

KINDS = ("sereega", "nmm", "evoked")
_CONFIGS = {"sereega": SereegaConfig, "nmm": NMMConfig, "evoked": EvokedConfig}
_DEFAULT_SNR = {"sereega": 5.0, "nmm": (5.0, 20.0), "evoked": 5.0}


def default_config(kind, **changes):
    """Default waveform configuration of a simulation kind.

    Parameters
    ----------
    kind : "sereega" | "nmm" | "evoked"
    **changes
        Fields to set instead of their defaults (e.g. ``random_sign=True``).

    Returns
    -------
    config : SereegaConfig | NMMConfig | EvokedConfig
    """
    _check_kind(kind)
    return _CONFIGS[kind](**changes)


def default_noise(kind):
    """Default noise composition: white, plus brain background for ``"evoked"``.

    Parameters
    ----------
    kind : "sereega" | "nmm" | "evoked"

    Returns
    -------
    noise : NoiseConfig
    """
    _check_kind(kind)
    return NoiseConfig(background_fraction=0.5 if kind == "evoked" else 0.0)


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_dropout(p):
    values = np.atleast_1d(np.asarray(p, float))
    if values.size not in (1, 2) or not ((values >= 0) & (values < 1)).all() or \
            values[0] > values[-1]:
        raise ValueError("channel_dropout must be a probability in [0, 1) or an interval "
                         f"(low, high) of such probabilities, got {p}")
    return tuple(float(v) for v in values) if np.ndim(p) else float(p)


def _json_range(value):
    """A number as is, an interval as a list (JSON)."""
    return list(value) if np.ndim(value) else value


def _check_config(kind, config):
    config = default_config(kind) if config is None else config
    if not isinstance(config, _CONFIGS[kind]):
        raise TypeError(f"config for kind={kind!r} must be a {_CONFIGS[kind].__name__}, "
                        f"got {type(config).__name__}")
    return config


def waveform_function(kind, config, bank=None):
    """``f(rng, n_patches) -> (n_patches, n_times)`` for a simulation kind.

    Parameters
    ----------
    kind : "sereega" | "nmm" | "evoked"
    config : SereegaConfig | NMMConfig | EvokedConfig
    bank : array, shape (n_clips, n_times) | None
        Spike clips (``"nmm"`` only).

    Returns
    -------
    fn : callable
    """
    if kind == "sereega":
        return partial(sereega_waveforms, config=config)
    if kind == "evoked":
        return partial(evoked_waveforms, config=config)
    return partial(nmm_waveforms, bank=bank, config=config)


def split_indices(n_total, fractions=(0.8, 0.2)):
    """Disjoint consecutive index ranges, e.g. train / validation.

    Parameters
    ----------
    n_total : int
        Number of samples to split.
    fractions : tuple of float
        Fractions summing to at most 1.

    Returns
    -------
    ranges : list of range
        Pass ``start=r.start, n_samples=len(r)`` to :class:`SimulatedDataset`.
    """
    fractions = np.asarray(fractions, dtype=float)
    if (fractions < 0).any() or fractions.sum() > 1 + 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to <= 1, got {tuple(fractions)}")
    bounds = np.round(np.concatenate([[0], np.cumsum(fractions)]) * n_total).astype(int)
    return [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


@fill_doc
class SimulatedDataset(torch.utils.data.Dataset):
    """Simulated EEG samples generated on the fly, deterministically.

    Sample ``i`` is drawn with ``numpy.random.default_rng([seed, start + i])``:
    the same in every process and DataLoader worker, independent of the order
    of access. Disjoint ``[start, start + n_samples)`` ranges give disjoint
    train / validation / test sets (see :func:`split_indices`).

    Parameters
    ----------
    fwd : mne.Forward
        Fixed-orientation surface forward.
    kind : "sereega" | "nmm" | "evoked"
        Gaussian ERPs (SEREEGA protocol), Jansen-Rit spikes, or evoked-like
        windows with a baseline.
    n_samples : int
        Length of the dataset.
    seed : int
        Seed of the whole set.
    start : int
        Index of the first sample.
    snr_db : float | tuple of float | None
        SNR in dB or an interval to draw it from; ``None`` is 5 dB (5-20 dB
        for ``"nmm"``).
    config : SereegaConfig | NMMConfig | EvokedConfig | None
        Waveform and patch settings for ``kind``.
    noise : NoiseConfig | None
        Noise composition; ``None`` is white noise (plus brain background for
        ``"evoked"``).
    channel_dropout : float | tuple of float
        Probability of dropping each channel (data zeroed, kept channels
        re-referenced to their average; see ``mask``), or an interval to draw
        it from for each sample.
    info : mne.Info | None
        Channels to simulate (good EEG channels of ``info``, in its order);
        ``None`` uses the EEG channels of ``fwd``.
    %(verbose)s

    Attributes
    ----------
    L : array, shape (n_channels, n_sources), float32
        Average-referenced leadfield matching ``Y``.
    geometry : SourceGeometry
    info : mne.Info
    sfreq : float
    tmin : float
    ch_names : list of str

    Notes
    -----
    ``ds[i]`` is a dict: ``Y`` (n_channels, n_times) float32 noisy
    average-referenced data in V, ``X`` (n_sources, n_times) float32 sources in
    A·m, ``seeds`` (k,) int64, ``orders`` (k,) int64, ``patches`` list of int64
    arrays, ``mask`` (n_channels,) bool (channels kept) and ``snr_db``. With
    channel dropout, the operator matching ``Y`` is
    ``apply_channel_mask(L, mask)``.
    """

    @verbose
    def __init__(self, fwd, kind="sereega", n_samples=10000, seed=0, start=0, snr_db=None,
                 config=None, noise=None, channel_dropout=0.0, info=None, verbose=None):
        _check_kind(kind)
        self.kind = kind
        self.config = _check_config(kind, config)
        self.noise = default_noise(kind) if noise is None else noise
        self.snr_db = _DEFAULT_SNR[kind] if snr_db is None else snr_db
        self.channel_dropout = _check_dropout(channel_dropout)
        self.n_samples, self.seed, self.start = int(n_samples), int(seed), int(start)
        L, self.ch_names = make_leadfield(fwd, info, return_ch_names=True)
        self._L64 = L
        self.L = L.astype(np.float32)
        self.geometry = SourceGeometry.from_forward(fwd)
        self.geometry.rings(0, 2 * self.config.order[1] + self.config.margin)  # precompute
        self.sfreq = float(self.config.sfreq)
        self.tmin = float(self.config.tmin)
        self.info = make_info(fwd, self.ch_names, self.sfreq, info)
        bank = load_spike_bank(self.config) if kind == "nmm" else None
        self._waveforms = waveform_function(kind, self.config, bank)
        logger.info(f"SimulatedDataset: {kind}, {self.n_samples} samples, "
                    f"{len(self.ch_names)} channels x {self.geometry.n_sources} sources")

    def __len__(self):
        return self.n_samples

    def rng(self, i):
        """The random generator of sample ``i``."""
        return np.random.default_rng([self.seed, self.start + int(i)])

    def __getitem__(self, i):
        i = int(i)
        if i < 0:
            i += self.n_samples
        if not 0 <= i < self.n_samples:
            raise IndexError(f"index {i} out of range for {self.n_samples} samples")
        sample = simulate_sample(self.rng(i), self.geometry, self._L64, self.config,
                                 self._waveforms, self.snr_db, self.noise,
                                 self.channel_dropout)
        del sample["M"], sample["E"]
        return sample

    def __repr__(self):
        return (f"<SimulatedDataset | {self.kind}, {self.n_samples} samples from "
                f"{self.start}, seed {self.seed}, {self.L.shape[0]} channels, "
                f"{self.L.shape[1]} sources, {self.config.n_times} times>")

    def describe(self):
        """JSON-able description of everything that defines the samples.

        Returns
        -------
        desc : dict
        """
        return dict(kind=self.kind, seed=self.seed, start=self.start,
                    n_samples=self.n_samples,
                    snr_db=_json_range(self.snr_db),
                    channel_dropout=_json_range(self.channel_dropout),
                    config=asdict(self.config),
                    noise=asdict(self.noise), sfreq=self.sfreq, tmin=self.tmin,
                    ch_names=list(self.ch_names), n_sources=self.geometry.n_sources)


def collate(batch):
    """Collate samples for a DataLoader.

    ``Y``, ``X`` and ``mask`` are stacked into tensors (batch first); seeds,
    orders and patches stay lists of arrays; other entries become lists.

    Parameters
    ----------
    batch : list of dict

    Returns
    -------
    batch : dict
    """
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("Y", "X", "mask"):
            out[key] = torch.from_numpy(np.stack(values))
        elif key == "snr_db":
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out


def worker_init_fn(worker_id):
    """DataLoader ``worker_init_fn`` limiting BLAS to one thread per worker.

    Samples are small: several workers each starting a full BLAS thread pool
    oversubscribe the cores. Uses ``threadpoolctl`` when installed, else does
    nothing.

    Parameters
    ----------
    worker_id : int
        Passed by the DataLoader (unused).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    threadpool_limits(1)


@verbose
def save_simulations(fname, dataset, indices=None, *, verbose=None):
    """Save a fixed set of samples to ``.npz`` with its configuration.

    Sources are stored sparsely (active rows only).

    Parameters
    ----------
    fname : path-like
        Output file (``.npz``).
    dataset : SimulatedDataset
    indices : array of int | None
        Samples to save; ``None`` for all.
    %(verbose)s
    """
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    Y, masks, snrs, seeds, orders, patches, rows, rows_data = [], [], [], [], [], [], [], []
    n_seeds, n_patch, n_rows = [], [], []
    for i in indices:
        s = dataset[i]
        Y.append(s["Y"])
        masks.append(s["mask"])
        snrs.append(s["snr_db"])
        seeds.append(s["seeds"])
        orders.append(s["orders"])
        n_seeds.append(len(s["seeds"]))
        patches += list(s["patches"])
        n_patch += [len(p) for p in s["patches"]]
        active = np.flatnonzero(np.any(s["X"] != 0, axis=1))
        rows.append(active)
        rows_data.append(s["X"][active])
        n_rows.append(len(active))
    desc = dataset.describe()
    desc["indices"] = [int(i) for i in indices]
    np.savez_compressed(
        fname, Y=np.stack(Y), mask=np.stack(masks), snr_db=np.array(snrs),
        seeds=np.concatenate(seeds), orders=np.concatenate(orders),
        n_seeds=np.array(n_seeds), patches=np.concatenate(patches), n_patch=np.array(n_patch),
        rows=np.concatenate(rows), rows_data=np.concatenate(rows_data),
        n_rows=np.array(n_rows), L=dataset.L, vertices_lh=dataset.geometry.vertices[0],
        vertices_rh=dataset.geometry.vertices[-1], config=json.dumps(desc))
    logger.info(f"Saved {len(indices)} samples to {fname}")


class SavedSimulations(torch.utils.data.Dataset):
    """Samples written by :func:`save_simulations`, same item format.

    Parameters
    ----------
    fname : path-like

    Attributes
    ----------
    config : dict
        The embedded description (kind, seed, configs, channel names...).
    L : array, shape (n_channels, n_sources), float32
    vertices : list of array
    sfreq : float
    """

    def __init__(self, fname):
        with np.load(fname) as npz:
            data = {k: npz[k] for k in npz.files}
        self.config = json.loads(str(data.pop("config")))
        self.L = data.pop("L")
        self.vertices = [data.pop("vertices_lh"), data.pop("vertices_rh")]
        self.sfreq = float(self.config["sfreq"])
        self._d = data
        self._seed_ptr = np.concatenate([[0], np.cumsum(data["n_seeds"])])
        self._patch_ptr = np.concatenate([[0], np.cumsum(data["n_patch"])])
        self._row_ptr = np.concatenate([[0], np.cumsum(data["n_rows"])])

    def __len__(self):
        return len(self._d["Y"])

    def __getitem__(self, i):
        d = self._d
        s0, s1 = self._seed_ptr[i], self._seed_ptr[i + 1]
        bounds = self._patch_ptr[s0:s1 + 1]
        patches = [d["patches"][lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        r0, r1 = self._row_ptr[i], self._row_ptr[i + 1]
        X = np.zeros((self.L.shape[1], d["Y"].shape[-1]), np.float32)
        X[d["rows"][r0:r1]] = d["rows_data"][r0:r1]
        return dict(Y=d["Y"][i], X=X, seeds=d["seeds"][s0:s1], orders=d["orders"][s0:s1],
                    patches=patches, mask=d["mask"][i], snr_db=float(d["snr_db"][i]))


def load_simulations(fname):
    """Read samples written by :func:`save_simulations`.

    Parameters
    ----------
    fname : path-like

    Returns
    -------
    dataset : SavedSimulations
    """
    return SavedSimulations(fname)
