"""Source-reconstruction metrics of the learned-MM paper (DESIGN §6).

They follow the authors' ``eval_results.py``. For every true patch seed ``s``
(the peak of the patch, shared over it), with ``X`` the true and ``X_hat``
the estimated sources (sources × times):

- ``t* = argmax_t |X[s, t]|``;
- zone = sources within 7 neighbour rings of ``s`` minus the sources of the
  other patches of the sample;
- ``ŝ = argmax_{zone} |X_hat[:, t*]|``; **LE** = ``‖pos[s] − pos[ŝ]‖`` in mm;
- **TE** = ``|t* − argmax_t |X_hat[ŝ, t]||`` in ms;
- **AUC** at ``t*``: labels ``|X[:, t*]| > 0``, scores
  ``|X_hat[:, t*]| / max``, ROC AUC in %;
- **nMSE** at ``t*``: ``mean((X[:, t*]/max|X[:, t*]| − X_hat[:, t*]/max|X_hat[:, t*]|)²)``;
- **PSNR** over the whole matrix, both normalised by their max ``|·|``:
  ``10 log10(R² / mse)`` with ``R = min(Xn) − max(X_hatn)``. This peak value
  is the authors' choice (not the usual ``max − min`` of one image); it is
  kept so that our numbers are comparable to Table I of the paper. Note its
  behaviour: for non-negative sources (SEREEGA ERPs) ``min(Xn) = 0`` and
  ``R² = max(X_hatn)²``, which is 1 when the largest absolute estimate is
  positive and smaller otherwise, so PSNR also rewards getting the sign of
  the peak right.

LE, TE, AUC and nMSE are averaged over the seeds of a sample; PSNR is one
value per sample. All metrics are invariant to a positive rescaling of
``X_hat``; LE, TE and AUC are also invariant to its sign.

Degenerate estimates (documented rule, no crash):

- a normalisation by ``max |·| = 0`` leaves the zero vector unchanged
  (``0 / 0 := 0``), so an all-zero estimate gets nMSE = ``mean(Xn²)`` and a
  finite PSNR;
- when ``X_hat`` is zero over the whole zone at ``t*`` there is no estimated
  peak: LE takes its worst case inside the zone (distance from ``s`` to the
  farthest zone source) and TE its worst case (largest possible delay,
  ``max(t*, n_times − 1 − t*)`` samples);
- ties in the AUC scores get average ranks, so constant scores give 50 %;
  AUC is NaN only if the labels are all equal (no inactive source);
- PSNR is ``+inf`` for a perfect reconstruction (``mse = 0``) and ``-inf``
  when ``R = 0`` (e.g. an all-zero estimate of non-negative sources); the
  summaries over samples leave non-finite values out and count them.

:mod:`mne.simulation.metrics` is not used: none of its functions computes
these quantities (its ROC AUC thresholds whole source estimates and needs
scikit-learn, its localisation errors are region/peak averages over time).
"""

import numpy as np
from scipy import sparse
from scipy.stats import rankdata

from .._docs import fill_doc
from .._forward import ring_hops

METRICS = ("LE", "AUC", "nMSE", "PSNR", "TE")
"""Metric names, in the order of the paper's Table I."""

METRIC_UNITS = {"LE": "mm", "AUC": "%", "nMSE": "", "PSNR": "dB", "TE": "ms"}
"""Units of each metric."""

LOWER_IS_BETTER = {"LE": True, "AUC": False, "nMSE": True, "PSNR": False, "TE": True}
"""Direction of each metric."""

FOUND = "found"
"""Key of the diagnostic returned with the metrics: % of seeds with an estimated
peak in their zone (the others get the worst-case LE and TE)."""

ZONE_ORDER = 7
"""Number of neighbour rings around a seed in which its estimated peak is sought."""

def _as_csr(adjacency):
    adjacency = sparse.csr_array(adjacency)
    if adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {adjacency.shape}")
    return adjacency


def neighbour_rings(adjacency, seed, order):
    """Sources within ``order`` neighbour rings of a seed.

    Parameters
    ----------
    adjacency : scipy.sparse array, shape (n_sources, n_sources)
        Source-space adjacency (non-zero where two sources are neighbours).
    seed : int
        Index of the centre source.
    order : int
        Number of rings (0 gives only the seed).

    Returns
    -------
    idx : array of int, shape (n_zone,)
        Sorted indices, the seed included.
    """
    hops = ring_hops(_as_csr(adjacency), int(order), seeds=[seed])
    return hops.indices.astype(np.int64)


def seed_zone(adjacency, seed, patches=(), order=ZONE_ORDER):
    """Search zone of a seed: its ``order`` rings minus other patches' sources.

    Parameters
    ----------
    adjacency : scipy.sparse array, shape (n_sources, n_sources)
        Source-space adjacency.
    seed : int
        The patch seed.
    patches : list of array of int
        Source indices of every patch of the sample (the patch containing
        ``seed`` is not removed from the zone).
    order : int
        Number of neighbour rings.

    Returns
    -------
    zone : array of int, shape (n_zone,)
        Sorted source indices; always contains ``seed``.
    """
    zone = neighbour_rings(adjacency, seed, order)
    others = [np.asarray(p) for p in patches if seed not in np.asarray(p)]
    if others:
        own = np.concatenate([np.asarray(p) for p in patches if seed in np.asarray(p)] + [[seed]])
        excluded = np.setdiff1d(np.concatenate(others), own)
        zone = np.setdiff1d(zone, excluded)
    return zone


def normalize_max(x):
    """Divide by the maximum absolute value (``0 / 0 := 0``).

    Parameters
    ----------
    x : array
        Any shape.

    Returns
    -------
    xn : array of float
        Same shape, ``max |xn| = 1`` unless ``x`` is all zero.
    """
    x = np.asarray(x, float)
    scale = np.max(np.abs(x)) if x.size else 0.0
    return x / scale if scale > 0 else np.zeros_like(x)


def peak_time(X, seed):
    """Time index of the largest absolute true activity of a seed.

    Parameters
    ----------
    X : array, shape (n_sources, n_times)
        True sources.
    seed : int
        Seed index.

    Returns
    -------
    t_peak : int
        ``argmax_t |X[seed, t]|``.
    """
    return int(np.argmax(np.abs(X[seed])))


def _peak_columns(X, X_hat, seed):
    """``X[:, t*]`` and ``X_hat[:, t*]`` at the seed's peak time ``t*``."""
    t_peak = peak_time(X, seed)
    return X[:, t_peak], X_hat[:, t_peak]


def estimated_seed(X_hat, t_peak, zone):
    """Source of largest absolute estimate in a zone at a time.

    Ties go to the zone's first source (:func:`numpy.argmax`).

    Parameters
    ----------
    X_hat : array, shape (n_sources, n_times)
        Estimated sources.
    t_peak : int
        Time index (the seed's :func:`peak_time` in the metrics).
    zone : array of int, shape (n_zone,)
        Candidate sources.

    Returns
    -------
    s_hat : int
        ``argmax_{zone} |X_hat[:, t_peak]|``, or -1 if the estimate is zero
        over the whole zone at ``t_peak``.
    """
    values = np.abs(X_hat[zone, t_peak])
    if not np.any(values > 0):
        return -1
    return int(zone[np.argmax(values)])


@fill_doc
def localization_error(X, X_hat, seed, pos, zone):
    """Localisation error of one seed, in mm.

    ``t*`` is the seed's true peak time (:func:`peak_time`) and ``ŝ`` the
    zone's source of largest ``|X_hat[:, t*]|`` (:func:`estimated_seed`).

    Parameters
    ----------
    %(X_pair_seed)s
    %(pos_zone)s

    Returns
    -------
    le : float
        ``‖pos[seed] − pos[ŝ]‖`` in mm; the largest distance from the seed
        to the zone when there is no estimated peak in the zone.
    """
    return patch_localization_error(X, X_hat, seed, [seed], pos, zone)  # a patch of one


@fill_doc
def patch_localization_error(X, X_hat, seed, patch, pos, zone):
    """Distance from the estimated peak to the nearest source of the true patch, in mm.

    :func:`localization_error` measures to the seed, which is ill-posed for a patch of
    uniform amplitude (as :func:`mne.label.select_sources` patches are): the true
    sources themselves peak at any of its sources. Here a peak anywhere in the
    patch counts as 0 mm. ``t*`` and ``ŝ`` as in :func:`localization_error`.

    Parameters
    ----------
    %(X_pair_seed)s
    patch : array of int, shape (n_patch,)
        Source indices of the seed's patch.
    %(pos_zone)s

    Returns
    -------
    le : float
        ``min_{p ∈ patch} ‖pos[p] − pos[ŝ]‖`` in mm; the largest distance from the
        patch to the zone when there is no estimated peak in the zone.
    """
    pos = np.asarray(pos, float)
    patch = np.atleast_1d(np.asarray(patch, int))
    s_hat = estimated_seed(X_hat, peak_time(X, seed), zone)
    candidates = zone if s_hat < 0 else [s_hat]
    dist = np.linalg.norm(pos[candidates][:, None] - pos[patch][None], axis=-1).min(1)
    return 1e3 * float(dist.max())


@fill_doc
def time_error(X, X_hat, seed, zone, sfreq):
    """Time error of one seed, in ms.

    ``t*`` and ``ŝ`` as in :func:`localization_error`.

    Parameters
    ----------
    %(X_pair_seed)s
    %(zone)s
    sfreq : float
        Sampling frequency in Hz.

    Returns
    -------
    te : float
        ``|t* − argmax_t |X_hat[ŝ, t]||`` in ms; the largest possible delay
        when there is no estimated peak in the zone.
    """
    t_peak = peak_time(X, seed)
    s_hat = estimated_seed(X_hat, t_peak, zone)
    if s_hat < 0:
        delay = max(t_peak, X.shape[1] - 1 - t_peak)
    else:
        delay = abs(t_peak - int(np.argmax(np.abs(X_hat[s_hat]))))
    return 1e3 * delay / float(sfreq)


def roc_auc(labels, scores):
    """Area under the ROC curve by the rank (Mann–Whitney) statistic.

    Equal to :func:`sklearn.metrics.roc_auc_score`; ties get average ranks.

    Parameters
    ----------
    labels : array of bool, shape (n,)
        True classes.
    scores : array of float, shape (n,)
        Scores, larger meaning more likely positive.

    Returns
    -------
    auc : float
        In ``[0, 1]``; NaN if ``labels`` holds one class only.
    """
    labels = np.asarray(labels, bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    ranks = rankdata(np.asarray(scores, float))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@fill_doc
def auc_at_peak(X, X_hat, seed):
    """ROC AUC of the estimated extent at the seed's peak time, in %.

    Ties in the scores get average ranks (:func:`roc_auc`).

    Parameters
    ----------
    %(X_pair_seed)s

    Returns
    -------
    auc : float
        ROC AUC (%) of the scores ``|X_hat[:, t*]| / max`` against the labels
        ``|X[:, t*]| > 0``.
    """
    x, x_hat = _peak_columns(X, X_hat, seed)
    return 100.0 * roc_auc(np.abs(x) > 0, np.abs(normalize_max(x_hat)))


@fill_doc
def nmse_at_peak(X, X_hat, seed):
    """Normalised mean squared error at the seed's peak time.

    Each column is divided by its max ``|·|`` first (:func:`normalize_max`,
    ``0 / 0 := 0``).

    Parameters
    ----------
    %(X_pair_seed)s

    Returns
    -------
    nmse : float
        ``mean((X[:, t*]/max|X[:, t*]| − X_hat[:, t*]/max|X_hat[:, t*]|)²)``.
    """
    x, x_hat = _peak_columns(X, X_hat, seed)
    return float(np.mean((normalize_max(x) - normalize_max(x_hat)) ** 2))


@fill_doc
def psnr(X, X_hat):
    """Peak signal-to-noise ratio of the whole estimate, in dB.

    Parameters
    ----------
    %(X_pair)s

    Returns
    -------
    psnr : float
        ``10 log10(R² / mean((Xn − X_hatn)²))`` with ``Xn``, ``X_hatn`` the
        matrices divided by their max ``|·|`` and ``R = min(Xn) − max(X_hatn)``
        (the authors' peak value, kept for comparability); ``+inf`` when the
        normalised matrices are equal.
    """
    Xn, X_hatn = normalize_max(X), normalize_max(X_hat)
    mse = float(np.mean((Xn - X_hatn) ** 2))
    peak = float(np.min(Xn) - np.max(X_hatn))
    if mse == 0:
        return np.inf
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(peak**2 / mse))


def _check_pair(X, X_hat):
    X, X_hat = np.asarray(X, float), np.asarray(X_hat, float)
    if X.ndim != 2 or X.shape != X_hat.shape:
        raise ValueError(
            f"X and X_hat must be 2D arrays of equal shape, got {X.shape} and {X_hat.shape}")
    return X, X_hat


@fill_doc
def compute_metrics(X, X_hat, seeds, patches, pos, adjacency, sfreq, *, order=ZONE_ORDER):
    """All five metrics of one sample.

    Parameters
    ----------
    X : array, shape (n_sources, n_times)
        True sources.
    X_hat : array, shape (n_sources, n_times)
        Estimated sources (any scale and units).
    seeds : array of int, shape (n_patches,)
        Seed of each true patch.
    patches : list of array of int
        Source indices of each true patch (same order as ``seeds``).
    pos : array, shape (n_sources, 3)
        Source positions in metres.
    adjacency : scipy.sparse array, shape (n_sources, n_sources)
        Source-space adjacency.
    sfreq : float
        Sampling frequency in Hz.
    order : int
        Neighbour rings of the LE/TE search zone (7 as the authors).

    Returns
    -------
    metrics : dict
        ``{"LE": mm, "AUC": %, "nMSE": float, "PSNR": dB, "TE": ms, "found": %}``;
        LE, AUC, nMSE and TE are averages over the seeds; ``found`` is the
        percentage of seeds whose zone holds a non-zero estimate at ``t*``
        (a diagnostic for sparse solvers, see the module notes).
    """
    X, X_hat = _check_pair(X, X_hat)
    seeds = np.atleast_1d(np.asarray(seeds, int))
    if seeds.size == 0:
        raise ValueError("seeds must hold at least one source index")
    per_seed = {name: [] for name in ("LE", "AUC", "nMSE", "TE", FOUND)}
    for seed in seeds:
        zone = seed_zone(adjacency, seed, patches, order)
        found = estimated_seed(X_hat, peak_time(X, seed), zone) >= 0
        per_seed[FOUND].append(100.0 * found)
        per_seed["LE"].append(localization_error(X, X_hat, seed, pos, zone))
        per_seed["TE"].append(time_error(X, X_hat, seed, zone, sfreq))
        per_seed["AUC"].append(auc_at_peak(X, X_hat, seed))
        per_seed["nMSE"].append(nmse_at_peak(X, X_hat, seed))
    out = {name: float(np.mean(values)) for name, values in per_seed.items()}
    out["PSNR"] = psnr(X, X_hat)
    return {name: out[name] for name in METRICS + (FOUND,)}


def summarize_metrics(per_sample):
    """Mean and standard deviation over samples.

    Parameters
    ----------
    per_sample : list of dict
        Outputs of :func:`compute_metrics` (or any dicts of numbers with the
        same keys).

    Returns
    -------
    summary : dict
        ``{key: {"mean", "sd", "n", "n_nan", "n_inf"}}`` for every key of the
        dicts, in their order. Mean and
        population standard deviation (``ddof=0``) are taken over the ``n``
        finite values; ``n_nan`` and ``n_inf`` count the values left out
        (an undefined AUC, a PSNR of ``±inf``), so that one degenerate sample
        cannot hide all the others.
    """
    summary = {}
    for name in per_sample[0] if per_sample else METRICS:
        values = np.array([m[name] for m in per_sample], float)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(np.mean(finite)) if finite.size else np.nan,
            "sd": float(np.std(finite)) if finite.size else np.nan,
            "n": int(finite.size),
            "n_nan": int(np.isnan(values).sum()),
            "n_inf": int(np.isinf(values).sum()),
        }
    return summary
