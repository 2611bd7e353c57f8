"""``python -m mne_learned_mm demo``: the main job on the embedded fsaverage head.

Builds the default forward, simulates evoked responses from extended cortical
sources (SEREEGA-style, 5 dB), solves them with the shipped learned MM model
and with sLORETA, prints a metric table and saves a figure.
"""

import argparse
import sys
import time

import numpy as np


def _demo(args):
    import matplotlib

    matplotlib.use("Agg")
    import mne

    from .evaluation.benchmark import format_table, noise_variance, sample_evoked, white_noise_cov
    from .evaluation.methods import MinimumNorm
    from .evaluation.metrics import compute_metrics, summarize_metrics
    from .head import make_fsaverage_forward
    from .inverse import LearnedMMInverse
    from .simulation import SimulatedDataset

    mne.set_log_level("WARNING")
    t0 = time.perf_counter()
    fwd = make_fsaverage_forward()
    print(f"forward: {fwd['nchan']} EEG channels x {fwd['nsource']} sources "
          f"(fsaverage ico3, embedded head) in {time.perf_counter() - t0:.1f} s")
    ds = SimulatedDataset(fwd, kind="sereega", n_samples=args.n, seed=args.seed,
                          snr_db=args.snr)
    geo = ds.geometry
    methods = {"learned MM": LearnedMMInverse(model=args.model, device=args.device,
                                                 n_jobs=args.n_jobs).fit(fwd)
               .apply, "sLORETA": MinimumNorm("sLORETA")}
    results = {name: [] for name in methods}
    seconds = {name: [] for name in methods}
    for i in range(args.n):
        item = ds[i]
        evoked = sample_evoked(item["Y"], ds.info)
        cov = white_noise_cov(noise_variance(item["Y"], item["X"], ds.L), ds.info["ch_names"])
        stcs = {}
        for name, method in methods.items():
            t = time.perf_counter()
            stcs[name] = method(evoked) if name == "learned MM" else method(evoked, fwd, cov)
            seconds[name].append(time.perf_counter() - t)
            results[name].append(compute_metrics(item["X"], stcs[name].data, item["seeds"],
                                                 item["patches"], geo.pos, geo.adjacency,
                                                 ds.sfreq))
        if i == 0:
            example = {"true": item["X"], "seed": item["seeds"][0],
                       **{name: stc.data for name, stc in stcs.items()}}
    print(f"\n{args.n} simulated evoked responses, SEREEGA-style extended sources "
          f"(1-3 patches), SNR {args.snr:g} dB\n")
    summaries = {}
    for name, rows in results.items():
        summaries[name] = summarize_metrics(rows)
        summaries[name]["ms"] = timing_summary(seconds[name])
    print(format_table({f"{args.snr:g}": summaries}))
    _figure(example, geo.pos, args.out)
    print(f"\nfigure saved to {args.out}")
    return 0


def timing_summary(seconds):
    """Mean and sd (ms) of per-sample times, in the form of a metric summary.

    Parameters
    ----------
    seconds : list of float
        Wall-clock time of each sample in s.

    Returns
    -------
    summary : dict
        ``mean``, ``sd`` (sample standard deviation, 0 for one sample), ``n``,
        ``n_nan`` and ``n_inf``.
    """
    ms = 1e3 * np.asarray(seconds, float)
    sd = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {"mean": float(ms.mean()), "sd": sd, "n": len(ms), "n_nan": 0, "n_inf": 0}


def _figure(ex, pos, fname):
    import matplotlib.pyplot as plt

    t_peak = int(np.argmax(np.abs(ex["true"][ex["seed"]])))
    names = ["true", "learned MM", "sLORETA"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for col, name in enumerate(names):
        amp = np.abs(ex[name][:, t_peak])
        amp = amp / max(amp.max(), 1e-30)
        for row, (a, b, view) in enumerate([(0, 1, "top (x, y)"), (1, 2, "side (y, z)")]):
            ax = axes[row, col]
            order = np.argsort(amp)
            ax.scatter(pos[:, a] * 1e3, pos[:, b] * 1e3, c="0.85", s=6)
            show = order[amp[order] > 0.05]
            ax.scatter(pos[show, a] * 1e3, pos[show, b] * 1e3, c=amp[show], s=10,
                       cmap="YlOrRd", vmin=0, vmax=1)
            ax.set_aspect("equal")
            ax.set_title(f"{name}: |X(t*)|, {view}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Extended source at its peak time, normalised amplitude")
    fig.tight_layout()
    fig.savefig(fname, dpi=100)
    plt.close(fig)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mne_learned_mm")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate, solve, compare with sLORETA")
    demo.add_argument("--n", type=_positive_int, default=20, help="number of simulated evoked")
    demo.add_argument("--snr", type=float, default=5.0, help="sensor SNR in dB")
    demo.add_argument("--seed", type=int, default=42, help="seed of the simulations")
    demo.add_argument("--model", default="default", help="model name or directory")
    demo.add_argument("--device", default="auto",
                      help='where to solve: "auto", "cpu", "cuda" or "cuda:<index>"')
    demo.add_argument("--n-jobs", type=int, default=None,
                      help="CPU threads of the learned solver (default: 1)")
    demo.add_argument("--out", default="demo_learned_mm.png", help="figure file")
    args = parser.parse_args(argv)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
