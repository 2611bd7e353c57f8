"""Object-level simulation: an ``Evoked`` and its true ``SourceEstimate``."""

from dataclasses import replace

import mne
import numpy as np
from mne.utils import logger, verbose

from .dataset import _check_config, _check_kind, default_noise, waveform_function
from .geometry import SourceGeometry
from .leadfield import make_info, make_leadfield
from .nmm import load_spike_bank
from .sources import simulate_sample


def _as_generator(random_state):
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    return np.random.default_rng(random_state)


@verbose
def simulate_evoked_extended(fwd, info=None, *, n_patches=1, order=3, snr_db=5.0, sfreq=None,
                             n_times=None, kind="sereega", config=None, noise=None,
                             random_state=None, verbose=None):
    """Simulate an evoked response of extended cortical patches.

    Sources are patches grown by neighbour rings around random seeds with a
    Gaussian spatial profile; their time courses are Gaussian ERPs
    (``"sereega"``), Jansen-Rit spikes (``"nmm"``) or evoked-like components
    after a baseline (``"evoked"``). Noise is scaled so that
    ``||M||_F / ||noise||_F = 10^(snr_db / 20)`` with ``M`` the clean,
    average-referenced data.

    Parameters
    ----------
    fwd : mne.Forward
        Fixed-orientation surface forward.
    info : mne.Info | None
        Channels to simulate (good EEG channels, in this order); ``None`` uses
        the EEG channels of ``fwd``.
    n_patches : int | tuple of int
        Number of patches (or an inclusive range).
    order : int | tuple of int
        Patch order in neighbour rings (or an inclusive range).
    snr_db : float | tuple of float
        SNR in dB (or an interval to draw from).
    sfreq : float | None
        Sampling frequency; ``None`` uses ``info["sfreq"]`` when ``info`` is
        given, else the kind's default (512, 500 or 1000 Hz).
    n_times : int | None
        Number of samples; ``None`` uses the kind's default (64, 500, 500).
        Not adjustable for ``"nmm"`` (the spike bank sets it).
    kind : "sereega" | "nmm" | "evoked"
        Time-course model.
    config : SereegaConfig | NMMConfig | EvokedConfig | None
        Further settings; ``n_patches``, ``order``, ``sfreq`` and ``n_times``
        override its fields.
    noise : NoiseConfig | None
        Noise composition (default: white, plus brain background for
        ``"evoked"``).
    random_state : None | int | numpy.random.Generator | numpy.random.RandomState
        Random state.
    %(verbose)s

    Returns
    -------
    evoked : mne.EvokedArray
        Simulated EEG in V with an (applied) average-reference projector.
    stc : mne.SourceEstimate
        True source activity in A·m on the vertices of ``fwd``.

    Notes
    -----
    ``evoked.data`` equals ``L @ stc.data + noise`` with ``L`` the
    average-referenced leadfield (:func:`make_leadfield`). The seeds, patches
    and SNR are logged at the info level.
    """
    _check_kind(kind)
    config = _check_config(kind, config)
    changes = dict(n_patches=n_patches, order=order)
    if sfreq is None and info is not None and kind != "nmm":
        sfreq = info["sfreq"]
    if kind == "nmm":
        if sfreq is not None and not np.isclose(sfreq, config.sfreq):
            raise ValueError(f"kind='nmm' clips are sampled at {config.sfreq} Hz; set "
                             "NMMConfig(sfreq=...) to change it.")
        if n_times is not None and n_times != config.n_times:
            raise ValueError(f"kind='nmm' clips have {config.n_times} samples; set "
                             "NMMConfig(n_times=...) to change it.")
    else:
        if sfreq is not None:
            changes["sfreq"] = float(sfreq)
        if n_times is not None:
            changes["n_times"] = int(n_times)
    config = replace(config, **changes)
    noise = default_noise(kind) if noise is None else noise
    rng = _as_generator(random_state)

    L, ch_names = make_leadfield(fwd, info, return_ch_names=True)
    geometry = SourceGeometry.from_forward(fwd)
    bank = load_spike_bank(config) if kind == "nmm" else None
    sample = simulate_sample(rng, geometry, L, config, waveform_function(kind, config, bank),
                             snr_db, noise, dtype=np.float64)
    logger.info(f"Simulated {len(sample['seeds'])} patch(es): seeds {sample['seeds']}, "
                f"orders {sample['orders']}, SNR {sample['snr_db']:.1f} dB")

    evoked = mne.EvokedArray(sample["Y"], make_info(fwd, ch_names, config.sfreq, info),
                             tmin=config.tmin, nave=1, comment=f"simulated ({kind})",
                             verbose=False)
    evoked.del_proj()
    evoked.set_eeg_reference("average", projection=True, verbose=False)
    evoked.apply_proj(verbose=False)
    stc = mne.SourceEstimate(sample["X"], geometry.vertices,
                             tmin=config.tmin, tstep=1.0 / config.sfreq,
                             subject=geometry.subject)
    return evoked, stc
