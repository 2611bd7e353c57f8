"""Localization with and without the baseline noise covariance, on correlated noise.

Each sample: SEREEGA-style extended sources (1-3 patches, the test protocol of
``benchmarks/RESULTS.md``), or with ``--kind evoked`` the evoked-like sources
(multiphasic components after a baseline, 500 samples at 1 kHz), on the
default fsaverage forward, plus brain-background
noise (500 random cortical dipoles with 1/f time courses, one draw per sample, so
its spatial covariance is that of those dipoles) and 10 % (in power) white sensor
noise, at ``--snr`` dB. The noise covariance is estimated as an MNE user does it,
``mne.compute_covariance`` on a 2 s noise-only baseline of the same recording
(``method="empirical"``), and given to ``apply_learned_mm`` (whitening) or not.
sLORETA is run with the baseline covariance and with an ad hoc diagonal one of
the same total power, for reference.

    OMP_NUM_THREADS=1 python benchmarks/bench_covariance.py --n 100 [--kind evoked]
        [--model default]
"""

import argparse
import time
import warnings

import mne
import numpy as np

from mne_learned_mm import LearnedMMInverse, make_fsaverage_forward
from mne_learned_mm.evaluation.methods import MinimumNorm
from mne_learned_mm.evaluation.metrics import compute_metrics, summarize_metrics
from mne_learned_mm.simulation import SimulatedDataset
from mne_learned_mm.simulation.noise import brain_background

METRICS = ("LE", "AUC", "nMSE", "TE")


def _sample(ds, i, snr_db, baseline_s, white_frac, rng, n_background=500, spread=1.0):
    item = ds[i]
    L = ds.L.astype(float)
    n_times = item["Y"].shape[1]
    n_base = int(baseline_s * ds.sfreq)
    clean = L @ item["X"].astype(float)
    background = brain_background(rng, L, n_base + n_times, n_sources=n_background)
    # per-channel levels (electrode impedances): log-uniform over [1, spread]
    levels = np.exp(rng.uniform(0, np.log(spread), (len(L), 1)))
    white = levels * rng.standard_normal(background.shape)
    white -= white.mean(0)
    white *= np.sqrt(white_frac) * np.linalg.norm(background) / np.linalg.norm(white)
    noise = background + white
    scale = np.linalg.norm(clean) / (np.linalg.norm(noise[:, n_base:])
                                     * np.sqrt(10 ** (snr_db / 10)))
    noise *= scale
    evoked = mne.EvokedArray(clean + noise[:, n_base:], ds.info, tmin=0.0, verbose=False)
    baseline = mne.io.RawArray(noise[:, :n_base], ds.info, verbose=False)
    with warnings.catch_warnings():  # the noise-only epochs need no baseline correction
        warnings.filterwarnings("ignore", "Epochs are not baseline corrected")
        cov = mne.compute_covariance(
            mne.make_fixed_length_epochs(baseline, duration=0.25, verbose=False),
            method="empirical", verbose=False)
    power = np.trace(cov["data"]) / len(cov["names"])
    adhoc = mne.make_ad_hoc_cov(ds.info, std=dict(eeg=np.sqrt(power)), verbose=False)
    return item, evoked, cov, adhoc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of samples")
    parser.add_argument("--snr", type=float, default=5.0, help="sensor SNR in dB")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--baseline", type=float, default=2.0, help="baseline length in s")
    parser.add_argument("--white", type=float, default=0.1,
                        help="white sensor noise, fraction of the background's power")
    parser.add_argument("--n-background", type=int, default=500,
                        help="random cortical dipoles of the brain background")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="sensor noise levels log-uniform over [1, spread] x")
    parser.add_argument("--kind", default="sereega", choices=("sereega", "evoked"),
                        help="time courses of the sources")
    parser.add_argument("--model", default="default", help="learned model name or path")
    args = parser.parse_args(argv)
    mne.set_log_level("ERROR")
    fwd = make_fsaverage_forward()
    ds = SimulatedDataset(fwd, kind=args.kind, n_samples=args.n, seed=args.seed,
                          snr_db=300.0)  # clean sources; the noise is added here
    geo = ds.geometry
    rng = np.random.default_rng(args.seed)
    inv = LearnedMMInverse(args.model, n_jobs=1).fit(fwd)
    methods = {
        "learned MM, no noise_cov": lambda ev, cov, adhoc: inv.apply(ev),
        "learned MM, baseline noise_cov": None,  # fitted per sample below
        "sLORETA, ad hoc diagonal cov": lambda ev, cov, adhoc: sl(ev, fwd, adhoc),
        "sLORETA, baseline noise_cov": lambda ev, cov, adhoc: sl(ev, fwd, cov),
    }
    sl = MinimumNorm("sLORETA")
    rows = {name: [] for name in methods}
    seconds = {name: 0.0 for name in methods}
    for i in range(args.n):
        item, evoked, cov, adhoc = _sample(ds, i, args.snr, args.baseline, args.white, rng,
                                           args.n_background, args.spread)
        evoked.set_eeg_reference("average", projection=True, verbose=False)
        for name, method in methods.items():
            t0 = time.perf_counter()
            if method is None:
                stc = LearnedMMInverse(args.model, n_jobs=1).fit(fwd, cov).apply(evoked)
            else:
                stc = method(evoked, cov, adhoc)
            seconds[name] += time.perf_counter() - t0
            rows[name].append(compute_metrics(item["X"], stc.data, item["seeds"],
                                              item["patches"], geo.pos, geo.adjacency,
                                              ds.sfreq))
    print(f"\n{args.n} samples, {args.kind} sources (1-3 patches), model {args.model}, "
          f"brain background "
          f"({args.n_background} dipoles) + {100 * args.white:g} % sensor noise (levels "
          f"1-{args.spread:g} x), SNR {args.snr:g} dB, baseline {args.baseline:g} s\n")
    print("| method | LE (mm) | AUC (%) | nMSE | TE (ms) | s/sample |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        s = summarize_metrics(r)
        cells = [f"{s[m]['mean']:.2f} ± {s[m]['sd']:.2f}" if m != "nMSE" else
                 f"{s[m]['mean']:.4f}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / args.n:.2f} |")
    le_no = np.array([r["LE"] for r in rows["learned MM, no noise_cov"]])
    le_cov = np.array([r["LE"] for r in rows["learned MM, baseline noise_cov"]])
    diff = le_no - le_cov
    print(f"\npaired LE gain of whitening (no cov - cov): {diff.mean():.2f} mm "
          f"(sd {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} s.e.), better in "
          f"{int((diff > 0).sum())} / worse in {int((diff < 0).sum())} of {len(diff)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
