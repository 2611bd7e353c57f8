"""Extended-source patches and the assembly of one simulated sample."""

import numpy as np

from .noise import apply_channel_mask, channel_dropout_mask, make_noise, scale_to_snr


def draw_patches(rng, geometry, n_patches=(1, 3), order=(1, 5), margin=2):
    """Draw non-overlapping extended patches grown by neighbour rings.

    The first seed is uniform over sources. A later seed of order ``o`` is
    uniform over the sources at least ``o + margin`` rings away from every
    source of the earlier patches (equivalently ``o_prev + o + margin`` rings
    from each earlier seed). When no source is free, the order is lowered;
    when none is free even at the lowest order, fewer patches are returned.

    Parameters
    ----------
    rng : numpy.random.Generator
    geometry : SourceGeometry
    n_patches : tuple of int
        Inclusive range of the number of patches.
    order : tuple of int
        Inclusive range of the patch order.
    margin : int
        Non-overlap margin in rings.

    Returns
    -------
    seeds : array of int64, shape (k,)
    orders : array of int64, shape (k,)
    patches : list of array of int64
        Sorted source indices of each patch (its seed included).
    """
    k = rng.integers(n_patches[0], n_patches[1] + 1)
    seeds, orders, patches = [], [], []
    for _ in range(k):
        o = int(rng.integers(order[0], order[1] + 1))
        if not seeds:
            seed = int(rng.integers(geometry.n_sources))
        else:
            seed = None
            for o_try in range(o, order[0] - 1, -1):
                forbidden = geometry.ring_mask(seeds, np.asarray(orders) + o_try + margin - 1)
                free = np.flatnonzero(~forbidden)
                if len(free):
                    seed, o = int(free[rng.integers(len(free))]), o_try
                    break
            if seed is None:
                break
        seeds.append(seed)
        orders.append(o)
        patches.append(geometry.rings(seed, o))
    return np.array(seeds, np.int64), np.array(orders, np.int64), patches


def patch_gain(geometry, L, seeds, patches):
    """Spatial profiles of the patches and their sensor topographies.

    Parameters
    ----------
    geometry : SourceGeometry
    L : array, shape (n_channels, n_sources)
    seeds : array of int, shape (k,)
    patches : list of array of int

    Returns
    -------
    profiles : list of array, shape (n_patch,)
        Gaussian amplitude over each patch (1 at the seed).
    G : array, shape (n_channels, k)
        ``L[:, patch] @ profile`` per patch.
    """
    profiles = [geometry.patch_amplitude(s, p) for s, p in zip(seeds, patches)]
    G = np.empty((L.shape[0], len(patches)))
    for j, (p, prof) in enumerate(zip(patches, profiles)):
        G[:, j] = L[:, p] @ prof
    return profiles, G


def source_matrix(n_sources, patches, profiles, waveforms, dtype=np.float32):
    """Dense source activity ``X`` of extended patches.

    Parameters
    ----------
    n_sources : int
    patches : list of array of int
    profiles : list of array
        Spatial amplitude per patch.
    waveforms : array, shape (k, n_times)
        Time course per patch.
    dtype : numpy dtype

    Returns
    -------
    X : array, shape (n_sources, n_times)
    """
    X = np.zeros((n_sources, waveforms.shape[1]), dtype=dtype)
    for p, prof, w in zip(patches, profiles, waveforms):
        X[p] += np.outer(prof, w)
    return X


def simulate_sample(rng, geometry, L, config, waveform_fn, snr, noise, channel_dropout=0.0,
                    dtype=np.float32):
    """One sample: patches, their time courses, clean and noisy sensor data.

    Parameters
    ----------
    rng : numpy.random.Generator
    geometry : SourceGeometry
    L : array, shape (n_channels, n_sources)
        Average-referenced leadfield (V/(A·m)).
    config : PatchConfig
        Spatial settings (and whatever ``waveform_fn`` reads).
    waveform_fn : callable
        ``waveform_fn(rng, n_patches) -> array, shape (n_patches, n_times)``.
    snr : float | tuple of float
        SNR in dB, or an interval to draw it from uniformly.
    noise : NoiseConfig
    channel_dropout : float | tuple of float
        Probability of dropping each channel, or an interval to draw that
        probability from uniformly for each sample.
    dtype : numpy dtype
        Type of ``Y`` and ``X``.

    Returns
    -------
    sample : dict
        ``Y`` (n_channels, n_times) noisy average-referenced data, ``X``
        (n_sources, n_times) sources, ``M`` and ``E`` (n_channels, n_times)
        clean data and scaled noise (float64, before channel dropout),
        ``seeds``, ``orders``, ``patches``, ``mask`` (n_channels,) bool and
        ``snr_db``.
    """
    seeds, orders, patches = draw_patches(rng, geometry, config.n_patches, config.order,
                                          config.margin)
    waveforms = waveform_fn(rng, len(seeds))
    profiles, G = patch_gain(geometry, L, seeds, patches)
    M = G @ waveforms
    snr = _value_or_draw(rng, snr)
    E = scale_to_snr(M, make_noise(rng, L, M.shape[1], noise), snr)
    Y = M + E
    mask = channel_dropout_mask(rng, L.shape[0], _value_or_draw(rng, channel_dropout))
    if not mask.all():
        Y = apply_channel_mask(Y, mask)
    return dict(Y=Y.astype(dtype, copy=False),
                X=source_matrix(geometry.n_sources, patches, profiles, waveforms, dtype),
                M=M, E=E, seeds=seeds, orders=orders, patches=patches, mask=mask,
                snr_db=snr)


def _value_or_draw(rng, value):
    """``value``, or a uniform draw from it when it is an interval ``(low, high)``."""
    return float(rng.uniform(*value)) if np.ndim(value) else float(value)
