"""Sensor noise, brain background, SNR scaling and channel dropout."""

from dataclasses import dataclass

import numpy as np

from .leadfield import average_reference


@dataclass
class NoiseConfig:
    """What the noise added to the clean sensor data is made of.

    The total noise is scaled to the requested SNR (Frobenius definition, see
    :func:`scale_to_snr`); this config only sets its composition.

    Parameters
    ----------
    exponent : float
        Spectral exponent of the sensor noise: power ∝ ``1 / f**exponent``.
        0 is white noise, 1 pink (1/f) noise.
    background_fraction : float
        Fraction (0 to 1) of the noise energy coming from the brain background:
        many random cortical dipoles with 1/f time courses projected through
        the leadfield (spatially correlated noise).
    n_background_sources : int
        Number of random background dipoles.
    background_exponent : float
        Spectral exponent of the background time courses.
    """

    exponent: float = 0.0
    background_fraction: float = 0.0
    n_background_sources: int = 500
    background_exponent: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.background_fraction <= 1.0:
            raise ValueError(
                f"background_fraction must be in [0, 1], got {self.background_fraction}")
        if self.n_background_sources < 1:
            raise ValueError("n_background_sources must be >= 1")


def frobenius(x):
    """Frobenius norm without BLAS (no thread start-up on small arrays).

    Parameters
    ----------
    x : array

    Returns
    -------
    norm : float
    """
    return float(np.sqrt(np.sum(np.square(x))))


def snr_db(signal, noise):
    """Signal-to-noise ratio ``20 log10(||signal||_F / ||noise||_F)`` in dB.

    Parameters
    ----------
    signal : array, shape (n_channels, n_times)
    noise : array, shape (n_channels, n_times)

    Returns
    -------
    snr : float
    """
    return float(20.0 * np.log10(frobenius(signal) / frobenius(noise)))


def scale_to_snr(signal, noise, snr):
    """Scale noise to a target SNR.

    ``noise · ||M||_F / (||noise||_F · sqrt(10^(snr/10)))`` with ``M`` the
    clean data, as in the source paper's simulations.

    Parameters
    ----------
    signal : array, shape (n_channels, n_times)
        Clean data ``M``.
    noise : array, shape (n_channels, n_times)
        Unscaled noise.
    snr : float
        Target SNR in dB.

    Returns
    -------
    noise : array, shape (n_channels, n_times)
    """
    scale = frobenius(signal) / (frobenius(noise) * np.sqrt(10.0 ** (snr / 10.0)))
    return noise * scale


def power_law_noise(rng, shape, exponent):
    """Gaussian noise with power spectrum ∝ ``1 / f**exponent`` along the last axis.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        ``(..., n_times)``.
    exponent : float
        0 gives white noise.

    Returns
    -------
    noise : array, shape ``shape``
        Unit variance per row (zero mean for ``exponent > 0``).
    """
    colored = _color(rng.standard_normal(shape), exponent)
    if exponent == 0:
        return colored
    std = colored.std(axis=-1, keepdims=True)
    return colored / np.where(std > 0, std, 1.0)


def _color(white, exponent):
    """Filter rows to a ``1 / f**exponent`` power spectrum (DC removed)."""
    if exponent == 0:
        return white
    n_times = white.shape[-1]
    freqs = np.fft.rfftfreq(n_times)
    gain = np.zeros_like(freqs)
    gain[1:] = freqs[1:] ** (-exponent / 2.0)
    return np.fft.irfft(np.fft.rfft(white, axis=-1) * gain, n=n_times, axis=-1)


def brain_background(rng, L, n_times, n_sources=500, exponent=1.0):
    """Sensor data of many random cortical dipoles with 1/f time courses.

    Parameters
    ----------
    rng : numpy.random.Generator
    L : array, shape (n_channels, n_sources_total)
        Leadfield.
    n_times : int
    n_sources : int
        Number of random dipoles (drawn without replacement when possible).
    exponent : float
        Spectral exponent of the dipole time courses.

    Returns
    -------
    background : array, shape (n_channels, n_times)

    Notes
    -----
    The dipoles' time courses are independent Gaussian processes with the
    same spectrum, so the sensor data is Gaussian with spatial covariance
    ``C = L_idx L_idx^T`` and that spectrum in time. When there are more
    dipoles than channels it is drawn as ``C^½ Z`` (``Z`` white, channels x
    times) and then coloured in time, which has exactly that distribution
    and costs far less than drawing every dipole.
    """
    n_channels, n_total = L.shape
    idx = rng.choice(n_total, size=n_sources, replace=n_sources > n_total)
    gain = L[:, idx]
    if n_sources > n_channels:
        w, U = np.linalg.eigh(gain @ gain.T)
        gain = U * np.sqrt(np.clip(w, 0.0, None))
    white = gain @ rng.standard_normal((gain.shape[1], n_times))
    return _color(white, exponent)


def make_noise(rng, L, n_times, config):
    """Unscaled, average-referenced sensor noise of the configured composition.

    Parameters
    ----------
    rng : numpy.random.Generator
    L : array, shape (n_channels, n_sources)
        Average-referenced leadfield (for the brain background).
    n_times : int
    config : NoiseConfig

    Returns
    -------
    noise : array, shape (n_channels, n_times)
        Unit Frobenius norm (before SNR scaling).
    """
    noise = _unit(average_reference(power_law_noise(rng, (L.shape[0], n_times),
                                                    config.exponent)))
    frac = config.background_fraction
    if frac > 0:
        back = _unit(brain_background(rng, L, n_times, config.n_background_sources,
                                      config.background_exponent))
        noise = np.sqrt(1.0 - frac) * noise + np.sqrt(frac) * back
    return noise


def _unit(x):
    norm = frobenius(x)
    return x / norm if norm > 0 else x


def channel_dropout_mask(rng, n_channels, p, min_channels=2):
    """Random subset of channels to keep.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_channels : int
    p : float
        Probability that each channel is dropped.
    min_channels : int
        At least this many channels are kept.

    Returns
    -------
    mask : array of bool, shape (n_channels,)
        True for kept channels.
    """
    if p <= 0:
        return np.ones(n_channels, bool)
    mask = rng.random(n_channels) >= p
    if mask.sum() < min_channels:
        mask[rng.choice(n_channels, size=min_channels, replace=False)] = True
    return mask


def apply_channel_mask(data, mask):
    """Zero dropped channels and re-reference the kept ones to their average.

    Applied to average-referenced data (or leadfield), this gives the average
    reference over the kept channels, consistently for data and leadfield.

    Parameters
    ----------
    data : array, shape (n_channels, ...)
    mask : array of bool, shape (n_channels,)

    Returns
    -------
    data : array, shape (n_channels, ...)
    """
    out = np.zeros_like(data)
    out[mask] = average_reference(data[mask])
    return out
