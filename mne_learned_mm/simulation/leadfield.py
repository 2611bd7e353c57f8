"""Average-referenced fixed-orientation leadfields and matching measurement info."""

import mne
import numpy as np

from .._forward import check_surface_forward


def pick_eeg_channels(fwd, info=None):
    """Names of the EEG channels to simulate, in ``info`` order.

    Parameters
    ----------
    fwd : mne.Forward
        The forward solution.
    info : mne.Info | None
        Measurement info; its good EEG channels are used (all must be in
        ``fwd``). ``None`` uses the EEG channels of the forward.

    Returns
    -------
    ch_names : list of str
    """
    source = fwd["info"] if info is None else info
    picks = mne.pick_types(source, meg=False, eeg=True, exclude="bads")
    ch_names = [source["ch_names"][k] for k in picks]
    if not ch_names:
        raise ValueError("No good EEG channels to simulate.")
    missing = sorted(set(ch_names) - set(fwd["sol"]["row_names"]))
    if missing:
        raise ValueError(
            f"{len(missing)} channel(s) of info are not in the forward: {missing[:10]}")
    return ch_names


def average_reference(data):
    """Subtract the mean over channels (rows).

    Parameters
    ----------
    data : array, shape (n_channels, ...)

    Returns
    -------
    data_ref : array, shape (n_channels, ...)
    """
    return data - data.mean(axis=0, keepdims=True)


def make_leadfield(fwd, info=None, *, return_ch_names=False):
    """Average-referenced fixed-orientation EEG leadfield.

    Parameters
    ----------
    fwd : mne.Forward
        Fixed-orientation surface forward.
    info : mne.Info | None
        Channels (and their order) to use: the good EEG channels of ``info``.
        ``None`` uses the EEG channels of the forward.
    return_ch_names : bool
        Also return the channel names (rows of the leadfield).

    Returns
    -------
    L : array, shape (n_channels, n_sources)
        Leadfield in V/(A·m), average referenced (columns sum to zero).
    ch_names : list of str
        Only if ``return_ch_names``.
    """
    check_surface_forward(fwd)
    ch_names = pick_eeg_channels(fwd, info)
    rows = [fwd["sol"]["row_names"].index(ch) for ch in ch_names]
    L = average_reference(np.asarray(fwd["sol"]["data"][rows], dtype=np.float64))
    return (L, ch_names) if return_ch_names else L


def make_info(fwd, ch_names, sfreq, info=None):
    """EEG measurement info for simulated data.

    Parameters
    ----------
    fwd : mne.Forward
        Forward whose channel positions are used when ``info`` is None.
    ch_names : list of str
        Channels, in order.
    sfreq : float
        Sampling frequency in Hz.
    info : mne.Info | None
        Info to pick the channels from when its sampling frequency matches.

    Returns
    -------
    info : mne.Info
    """
    if info is not None and np.isclose(info["sfreq"], sfreq):
        return mne.pick_info(info, mne.pick_channels(info["ch_names"], ch_names,
                                                     ordered=True))
    source = fwd["info"] if info is None else info
    pos = {ch["ch_name"]: ch["loc"][:3] for ch in source["chs"] if ch["ch_name"] in ch_names}
    new = mne.create_info(list(ch_names), float(sfreq), "eeg")
    montage = mne.channels.make_dig_montage(ch_pos={ch: pos[ch] for ch in ch_names},
                                            coord_frame="head")
    new.set_montage(montage)
    return new
