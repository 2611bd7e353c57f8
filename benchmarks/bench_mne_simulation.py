"""Accuracy on evoked data made with MNE's own simulation tools, as an MNE user makes them.

Nothing here comes from this package's simulators. Each sample:

- 1-3 patches drawn by :func:`mne.label.select_sources` (random hemisphere and place on
  fsaverage's white surface, radius uniform over ``--extent`` mm, uniform amplitude over
  the patch), each with its own waveform, placed by
  :class:`mne.simulation.SourceSimulator` on the packaged forward's source space;
- the noise-free evoked from :func:`mne.simulation.simulate_evoked`, and the noise from
  :func:`mne.simulation.add_noise`: Gaussian with a noise covariance and an IIR (AR) filter
  in time (``--iir``, MNE's ``iir_filter``), scaled to ``--snr`` dB;
- the window runs from ``--tmin`` (a baseline without sources) to ``--tmax``.

Waveforms (``--waveform``): ``wavelet``, a 4-20 Hz sine of random phase under a Gaussian
envelope (sd 15-50 ms) at a random latency, as in MNE's simulation examples; ``erp``, a
Gaussian (sd 20-60 ms).

The noise covariance (``--cov``): ``brain``, the spatial covariance of 500 random cortical
dipoles plus 10 % white sensor noise (one draw for the whole run, a subject's noise), or
``adhoc``, :func:`mne.make_ad_hoc_cov`. Every method gets that covariance, as a user of
MNE's simulation tutorials passes it, or with ``--baseline S`` the one
:func:`mne.compute_covariance` estimates from S seconds of the same noise (250 ms epochs),
as a user computes it from a recording's baseline; the average reference is applied as a
projector.
Metrics are DESIGN's (LE, AUC, nMSE, TE); a patch's seed is its source nearest its centre of mass
(:meth:`mne.Label.center_of_mass`). As the true sources are flat over a patch, the LE to
the seed is not zero even for them (the ``truth`` row); the table adds the LE to the
patch (0 where the estimate peaks inside it;
:func:`~mne_learned_mm.evaluation.metrics.patch_localization_error`). The seconds per
sample include each method's preparation for the sample's covariance (the learned
estimator's ``fit``, MNE's inverse operator where the covariance is not a multiple of the
last one).

    OMP_NUM_THREADS=1 python benchmarks/bench_mne_simulation.py --n 100 --seed 42
        [--waveform wavelet|erp] [--cov brain|adhoc] [--iir 1 -0.9] [--snr 5] [--baseline 2]
        [--methods truth learned_mm sLORETA dSPM eLORETA MNE] [--model NAME=DIR ...]
        [--out rows.json]
"""

import argparse
import json
import time
import warnings

import mne
import numpy as np
from mne.simulation import SourceSimulator, add_noise, simulate_evoked

from mne_learned_mm import LearnedMMInverse, fetch_fsaverage_head, make_fsaverage_forward
from mne_learned_mm._forward import source_adjacency
from mne_learned_mm.evaluation.methods import MinimumNorm
from mne_learned_mm.evaluation.metrics import (
    compute_metrics,
    patch_localization_error,
    seed_zone,
    summarize_metrics,
)
from mne_learned_mm.simulation.noise import brain_background

METRICS = ("LE", "LE to patch", "AUC", "nMSE", "TE")
CLASSICAL = ("sLORETA", "dSPM", "eLORETA", "MNE")


def wavelet(rng, times):
    """A 4-20 Hz sine under a Gaussian envelope at a random latency."""
    t0 = rng.uniform(0.05, 0.75) * times[-1]
    sd = rng.uniform(0.015, 0.05)
    freq = rng.uniform(4.0, 20.0)
    phase = rng.uniform(0, 2 * np.pi)
    return np.sin(2 * np.pi * freq * (times - t0) + phase) * np.exp(-0.5 * ((times - t0) / sd) ** 2)


def erp(rng, times):
    """A Gaussian deflection of random sign, latency and width."""
    t0 = rng.uniform(0.1, 0.75) * times[-1]
    sd = rng.uniform(0.02, 0.06)
    return rng.choice([-1.0, 1.0]) * np.exp(-0.5 * ((times - t0) / sd) ** 2)


WAVEFORMS = {"wavelet": wavelet, "erp": erp}


def noise_covariance(kind, fwd, info, rng, n_dipoles=500, white=0.1):
    """The run's noise covariance: a brain background's or MNE's ad hoc one."""
    if kind == "adhoc":
        return mne.make_ad_hoc_cov(info, verbose=False)
    L = fwd["sol"]["data"]
    back = brain_background(rng, L, 4000, n_sources=n_dipoles, exponent=0.0)
    C = back @ back.T / back.shape[1]
    C += white * np.trace(C) / len(C) * np.eye(len(C))
    return mne.Covariance(C, info["ch_names"], bads=[], projs=[], nfree=4000)


def draw_patches(rng, src, subjects_dir, n_patches, extent):
    """``n_patches`` labels of ``select_sources`` holding at least one source each."""
    labels = []
    while len(labels) < n_patches:
        hemi = int(rng.integers(2))
        label = mne.label.select_sources(
            "fsaverage", ("lh", "rh")[hemi], location="random",
            extent=float(rng.uniform(*extent)), subjects_dir=subjects_dir,
            random_state=int(rng.integers(2**31)), surf="white")
        if np.isin(label.vertices, src[hemi]["vertno"]).any():
            labels.append(label)
    return labels


def true_sources(stc, src):
    """The simulated stc as an array on the forward's source order."""
    rows = np.concatenate([np.searchsorted(src[0]["vertno"], stc.lh_vertno),
                           len(src[0]["vertno"]) + np.searchsorted(src[1]["vertno"],
                                                                   stc.rh_vertno)])
    X = np.zeros((sum(len(s["vertno"]) for s in src), len(stc.times)))
    X[rows] = stc.data
    return X


def label_sources(label, src, subjects_dir):
    """Source indices (forward order) of a label, and its seed: its centre of mass."""
    hemi = 0 if label.hemi == "lh" else 1
    offset = 0 if hemi == 0 else len(src[0]["vertno"])
    inside = np.flatnonzero(np.isin(src[hemi]["vertno"], label.vertices))
    centre = label.center_of_mass("fsaverage", restrict_vertices=src[hemi]["vertno"][inside],
                                  subjects_dir=subjects_dir, surf="white")
    return offset + inside, offset + int(np.searchsorted(src[hemi]["vertno"], centre))


def _noise(inst, cov, iir, rng):
    """``add_noise`` of ``cov`` and ``iir`` to ``inst`` (in place)."""
    with warnings.catch_warnings():  # the average reference is applied by the caller
        warnings.filterwarnings("ignore", "No average EEG reference")
        add_noise(inst, cov, iir_filter=iir, random_state=int(rng.integers(2**31)),
                  verbose=False)
    return inst


def baseline_covariance(rng, info, cov, iir, seconds, scale):
    """The covariance a user estimates: ``compute_covariance`` on a noise-only baseline.

    ``seconds`` of the same noise as the evoked's (``add_noise`` to a raw of zeros,
    scaled alike), cut into 250 ms epochs, average-referenced by a projector.
    """
    raw = mne.io.RawArray(np.zeros((len(info["ch_names"]), int(seconds * info["sfreq"]))),
                          info, verbose=False)
    _noise(raw, cov, iir, rng)
    raw._data *= scale
    raw.set_eeg_reference("average", projection=True, verbose=False)
    with warnings.catch_warnings():  # the noise-only epochs need no baseline correction
        warnings.filterwarnings("ignore", "Epochs are not baseline corrected")
        epochs = mne.make_fixed_length_epochs(raw, duration=0.25, verbose=False)
        return mne.compute_covariance(epochs, method="empirical", verbose=False)


def simulate(rng, fwd, info, cov, subjects_dir, args):
    """One evoked of MNE's simulation tools, its true sources, seeds and patches."""
    src = fwd["src"]
    tstep = 1.0 / info["sfreq"]
    n_times = int(round((args.tmax - args.tmin) * info["sfreq"])) + 1
    n_base = int(round(-args.tmin * info["sfreq"]))
    times = np.arange(n_times - n_base) * tstep
    labels = draw_patches(rng, src, subjects_dir, int(rng.integers(1, args.max_patches + 1)),
                          args.extent)
    sim = SourceSimulator(src, tstep=tstep, first_samp=0, duration=n_times * tstep)
    for label in labels:
        sim.add_data(label, 1e-8 * WAVEFORMS[args.waveform](rng, times),
                     np.array([[n_base, 0, 1]]))
    stc = sim.get_stc(start_sample=0, stop_sample=n_times)
    stc.tmin = args.tmin
    clean = simulate_evoked(fwd, stc, info, cov=None, nave=1, verbose=False)
    noise = clean.copy()
    noise.data[:] = 0.0
    _noise(noise, cov, args.iir, rng)
    noise.data -= noise.data.mean(0)  # the average reference of the clean data
    signal = clean.data - clean.data.mean(0)
    scale = np.linalg.norm(signal) / (np.linalg.norm(noise.data)
                                      * np.sqrt(10 ** (args.snr / 10)))
    evoked = clean.copy()
    evoked.data = clean.data + scale * noise.data
    evoked.set_eeg_reference("average", projection=True, verbose=False)
    if args.baseline:
        cov_scaled = baseline_covariance(rng, info, cov, args.iir, args.baseline, scale)
    else:
        cov_scaled = cov.copy()
        cov_scaled["data"] = cov["data"] * scale**2
    patches, seeds = zip(*(label_sources(lab, src, subjects_dir) for lab in labels))
    return evoked, cov_scaled, true_sources(stc, src), np.array(seeds), list(patches)


def metrics(X, X_hat, seeds, patches, pos, adjacency, sfreq):
    """DESIGN's metrics and the LE to the nearest source of each true patch."""
    out = compute_metrics(X, X_hat, seeds, patches, pos, adjacency, sfreq)
    out["LE to patch"] = float(np.mean([
        patch_localization_error(X, X_hat, seed, patch, pos,
                                 seed_zone(adjacency, seed, patches))
        for seed, patch in zip(seeds, patches)]))
    return out


def _methods(args):
    out = {}
    for name in args.methods:
        if name == "truth":  # the metrics' floor on these patches: the true sources
            out[name] = ("truth", None)
        elif name == "learned_mm":
            for label, model in (args.model or [("learned_mm", "default")]):
                out[label] = ("learned", model)
        else:
            out[name] = ("classical", MinimumNorm(name))
    return out


def _parse_model(text):
    name, sep, model = text.partition("=")
    return (name, model) if sep else ("learned_mm", text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of samples")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--snr", type=float, default=5.0, help="sensor SNR in dB")
    parser.add_argument("--sfreq", type=float, default=500.0)
    parser.add_argument("--tmin", type=float, default=-0.1)
    parser.add_argument("--tmax", type=float, default=0.4)
    parser.add_argument("--max-patches", type=int, default=3)
    parser.add_argument("--extent", type=float, nargs=2, default=(10.0, 30.0),
                        help="patch radius range in mm (select_sources' extent)")
    parser.add_argument("--waveform", default="wavelet", choices=tuple(WAVEFORMS))
    parser.add_argument("--cov", default="brain", choices=("brain", "adhoc"))
    parser.add_argument("--iir", type=float, nargs="+", default=(1.0, -0.9),
                        help="AR coefficients of the noise in time (MNE's iir_filter)")
    parser.add_argument("--baseline", type=float, default=0.0,
                        help="estimate the covariance from this many seconds of noise "
                        "(0: give the methods the true one)")
    parser.add_argument("--methods", nargs="+", default=("learned_mm",) + CLASSICAL)
    parser.add_argument("--model", action="append", type=_parse_model,
                        help="NAME=MODEL for a learned model (repeatable)")
    parser.add_argument("--out", help="write the per-sample metrics to this JSON file")
    args = parser.parse_args(argv)
    mne.set_log_level("ERROR")
    rng = np.random.default_rng(args.seed)
    subjects_dir = fetch_fsaverage_head()
    fwd = make_fsaverage_forward()
    info = mne.create_info(fwd["info"]["ch_names"], args.sfreq, "eeg")
    info.set_montage(mne.channels.make_dig_montage(
        {ch["ch_name"]: ch["loc"][:3] for ch in fwd["info"]["chs"]}, coord_frame="head"))
    cov = noise_covariance(args.cov, fwd, info, rng)
    pos = np.concatenate([s["rr"][s["vertno"]] for s in fwd["src"]])
    adjacency = source_adjacency(fwd["src"])
    methods = _methods(args)
    rows = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for _ in range(args.n):
        evoked, cov_i, X, seeds, patches = simulate(rng, fwd, info, cov, subjects_dir, args)
        for name, (kind, method) in methods.items():
            t0 = time.perf_counter()
            if kind == "truth":
                stc = mne.SourceEstimate(X, [s["vertno"] for s in fwd["src"]],
                                         evoked.times[0], 1.0 / args.sfreq)
            elif kind == "learned":
                stc = LearnedMMInverse(method, n_jobs=1).fit(fwd, cov_i).apply(evoked)
            else:
                stc = method(evoked, fwd, cov_i)
            seconds[name] += time.perf_counter() - t0
            rows[name].append(metrics(X, stc.data, seeds, patches, pos, adjacency,
                                      args.sfreq))
    given = (f"covariance from a {args.baseline:g} s baseline" if args.baseline
             else "the true covariance")
    print(f"\n{args.n} samples (seed {args.seed}), MNE's simulation: 1-{args.max_patches} "
          f"select_sources patches of radius {args.extent[0]:g}-{args.extent[1]:g} mm, "
          f"{args.waveform} waveforms, {args.cov} covariance, iir_filter "
          f"{list(args.iir)}, {given}, {args.snr:g} dB, {args.sfreq:g} Hz, {args.tmin:g} to "
          f"{args.tmax:g} s\n")
    print("| method | LE (mm) | LE to patch (mm) | AUC (%) | nMSE | TE (ms) | s/sample |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        s = summarize_metrics(r)
        cells = [f"{s[m]['mean']:.2f} ± {s[m]['sd']:.2f}" if m != "nMSE" else
                 f"{s[m]['mean']:.4f}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / args.n:.3f} |")
    if args.out:
        with open(args.out, "w") as fid:
            json.dump({"args": vars(args), "rows": rows}, fid)
    names = [name for name in rows if name != "truth"]
    for metric in ("LE", "LE to patch"):
        first = np.array([r[metric] for r in rows[names[0]]])
        for other in names[1:]:
            diff = first - np.array([r[metric] for r in rows[other]])
            print(f"paired {metric} {names[0]} - {other}: {diff.mean():+.2f} ± "
                  f"{diff.std(ddof=1) / np.sqrt(len(diff)):.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
