"""Source time courses: SEREEGA-style Gaussian ERPs and evoked-like components."""

from dataclasses import dataclass

import numpy as np

from .._docs import fill_doc


@fill_doc
@dataclass
class PatchConfig:
    """Spatial settings shared by all kinds of simulations.

    Parameters
    ----------
    %(n_patches)s
    order : tuple of int
        Inclusive range of the patch order (number of neighbour rings).
    %(margin)s
    amplitude : float
        Base source amplitude in A·m.
    random_sign : bool
        Draw the sign of each patch's time course at random.
    """

    n_patches: tuple = (1, 3)
    order: tuple = (1, 5)
    margin: int = 2
    amplitude: float = 10e-9
    random_sign: bool = False

    def __post_init__(self):
        self.n_patches = _int_range(self.n_patches, "n_patches", 1)
        self.order = _int_range(self.order, "order", 0)
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1, got {self.margin}")


def _int_range(value, name, low):
    lo, hi = (value, value) if np.isscalar(value) else value
    lo, hi = int(lo), int(hi)
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= min <= max, got {value}")
    return (lo, hi)


@dataclass
class SereegaConfig(PatchConfig):
    """SEREEGA-style Gaussian ERP simulation (authors' protocol by default).

    Centre, width and amplitude are drawn uniformly around base values, first
    per sample (``*_dev[0]``) and then per patch around the sample's value
    (``*_dev[1]``), as relative deviations.

    Parameters
    ----------
    n_patches, order, margin, amplitude, random_sign
        See :class:`PatchConfig`. ``amplitude`` is the ERP peak (10 nA·m).
    sfreq : float
        Sampling frequency in Hz.
    n_times : int
        Number of time samples.
    amplitude_dev : tuple of float
        Relative amplitude deviation per sample, then per patch.
    center : float | None
        Base ERP centre in s; ``None`` is the middle of the window.
    center_dev : tuple of float
        Relative centre deviation per sample, then per patch.
    width : float
        Base ERP width in s (Gaussian sd = width / 6).
    width_dev : tuple of float
        Relative width deviation per sample, then per patch.
    """

    sfreq: float = 512.0
    n_times: int = 64
    amplitude_dev: tuple = (0.5, 0.7)
    center: float = None
    center_dev: tuple = (0.5, 0.3)
    width: float = 0.06
    width_dev: tuple = (0.02, 0.1)

    @property
    def tmin(self):
        """Time of the first sample in s."""
        return 0.0


@dataclass
class EvokedConfig(PatchConfig):
    """Evoked-like windows: a pre-stimulus baseline then components.

    Each patch's time course is a sum of Gaussian components at increasing
    latencies with alternating signs (like P1-N1-P2).

    Parameters
    ----------
    n_patches, order, margin, amplitude, random_sign
        See :class:`PatchConfig`. ``random_sign`` draws the sign of the first
        component (later ones alternate).
    sfreq : float
        Sampling frequency in Hz (250-1000 Hz is typical).
    n_times : int
        Number of time samples.
    tmin : float
        Time of the first sample in s (negative: pre-stimulus baseline).
    n_components : tuple of int
        Inclusive range of the number of components per patch.
    latency : tuple of float
        Post-stimulus interval in s split into one bin per component; each
        component's latency is uniform in its bin.
    width : tuple of float
        Range of the component widths in s (Gaussian sd = width / 6).
    amplitude_dev : tuple of float
        Relative amplitude deviation per patch, then per component (towards
        smaller values only for components).
    """

    random_sign: bool = True
    sfreq: float = 1000.0
    n_times: int = 500
    tmin: float = -0.1
    n_components: tuple = (1, 3)
    latency: tuple = (0.05, 0.35)
    width: tuple = (0.03, 0.12)
    amplitude_dev: tuple = (0.5, 0.5)

    def __post_init__(self):
        super().__post_init__()
        self.n_components = _int_range(self.n_components, "n_components", 1)
        if self.latency[0] < 0:
            raise ValueError("Component latencies must be post-stimulus (>= 0)")


def gaussian_erp(times, center, width, amplitude=1.0):
    """SEREEGA's Gaussian ERP: peak ``amplitude`` at ``center``, sd ``width / 6``.

    Parameters
    ----------
    times : array, shape (n_times,)
        Times in s.
    center, width, amplitude : float | array, shape (k,)
        Per-waveform parameters (s, s, any unit).

    Returns
    -------
    erp : array, shape (k, n_times)
        One row per waveform (a single row for scalar parameters).
    """
    center, width, amplitude = (np.atleast_1d(np.asarray(v, float))[:, None]
                                for v in (center, width, amplitude))
    return amplitude * np.exp(-0.5 * ((times[None, :] - center) / (width / 6.0)) ** 2)


def _jitter(rng, base, dev, size=None):
    """Uniform draw in ``base * [1 - dev, 1 + dev]``."""
    return base * rng.uniform(1.0 - dev, 1.0 + dev, size)


def _signs(rng, k, random_sign):
    return rng.choice([-1.0, 1.0], size=k) if random_sign else np.ones(k)


def sereega_waveforms(rng, n_patches, config):
    """Draw the patch time courses of one SEREEGA-style sample.

    Amplitude, centre and width are jittered once for the sample, then once
    per patch (the two ``*_dev`` deviations).

    Parameters
    ----------
    rng : numpy.random.Generator
    n_patches : int
    config : SereegaConfig
        Time axis and ERP settings.

    Returns
    -------
    waveforms : array, shape (n_patches, n_times)
        In A·m (peak of each = its drawn amplitude, signed).
    """
    times = np.arange(config.n_times) / config.sfreq
    center = config.center
    if center is None:
        center = config.n_times / config.sfreq / 2.0
    amp = _jitter(rng, config.amplitude, config.amplitude_dev[0])
    cen = _jitter(rng, center, config.center_dev[0])
    wid = _jitter(rng, config.width, config.width_dev[0])
    amps = _jitter(rng, amp, config.amplitude_dev[1], n_patches)
    cens = _jitter(rng, cen, config.center_dev[1], n_patches)
    wids = _jitter(rng, wid, config.width_dev[1], n_patches)
    amps = amps * _signs(rng, n_patches, config.random_sign)
    return gaussian_erp(times, cens, wids, amps)


def evoked_waveforms(rng, n_patches, config):
    """Draw the patch time courses of one evoked-like sample.

    Each patch sums ``k`` Gaussian components of alternating sign, ``k``
    drawn in ``n_components``, one latency in each equal slice of ``latency``.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_patches : int
    config : EvokedConfig
        Time axis, component and amplitude settings.

    Returns
    -------
    waveforms : array, shape (n_patches, n_times)
        In A·m, zero on the baseline up to the components' tails.
    """
    times = config.tmin + np.arange(config.n_times) / config.sfreq
    out = np.zeros((n_patches, config.n_times))
    for j in range(n_patches):
        k = rng.integers(config.n_components[0], config.n_components[1] + 1)
        edges = np.linspace(config.latency[0], config.latency[1], k + 1)
        lat = rng.uniform(edges[:-1], edges[1:])
        wid = rng.uniform(config.width[0], config.width[1], k)
        amp = _jitter(rng, config.amplitude, config.amplitude_dev[0])
        amps = amp * rng.uniform(1.0 - config.amplitude_dev[1], 1.0, k)
        sign = _signs(rng, 1, config.random_sign)[0]
        amps *= sign * (-1.0) ** np.arange(k)
        out[j] = gaussian_erp(times, lat, wid, amps).sum(axis=0)
    return out
