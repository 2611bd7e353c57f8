"""Paired benchmark of a ``LearnedMMInverse`` option against the plain solve.

    python benchmarks/bench_deflation.py --data sereega --random-sign --n 200 --seed 42
    python benchmarks/bench_deflation.py --option denoise --data evoked --n 200 --seed 42

``--option deflate`` (the default) compares ``deflate=True``, ``--option denoise``
``denoise=True``, with the plain solve on the same samples. Prints the two methods'
metrics, overall and by number of patches, and the paired differences (option − one
solve, ± one standard error).
"""

import argparse
import json

import numpy as np

from mne_learned_mm.evaluation.benchmark import _load_forward, run_benchmark
from mne_learned_mm.evaluation.methods import LearnedSolver

METRICS = ("LE", "AUC", "PSNR", "TE")


def _line(name, per_sample, n_patches):
    vals = {m: np.asarray(per_sample[m]) for m in METRICS + ("ms",)}
    text = f"| {name} | all | " + " | ".join(f"{vals[m].mean():.2f}" for m in METRICS)
    rows = [text + f" | {vals['ms'].mean():.0f} |"]
    for k in np.unique(n_patches):
        sel = n_patches == k
        rows.append(f"| {name} | {k} patch{'es' if k > 1 else ''} (n = {sel.sum()}) | "
                    + " | ".join(f"{vals[m][sel].mean():.2f}" for m in METRICS) + " | |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sereega", choices=("sereega", "nmm", "evoked"))
    parser.add_argument("--random-sign", action="store_true")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--snr", type=float, default=None,
                        help="SNR in dB (default: the kind's: 5 dB, 5-20 dB for nmm)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="default")
    parser.add_argument("--option", default="deflate", choices=("deflate", "denoise"))
    parser.add_argument("--channels", type=int, default=None,
                        help="use a spread subset of 64 or 32 of the channels")
    parser.add_argument("--out", default=None, help="JSON file for the per-sample values")
    args = parser.parse_args()
    fwd = _load_forward(None)
    methods = {"one solve": LearnedSolver(args.model),
               args.option: LearnedSolver(args.model, **{args.option: True})}
    result = run_benchmark(fwd, data=args.data, n_samples=args.n, snr_db=args.snr,
                           methods=methods, seed=args.seed, random_sign=args.random_sign,
                           n_channels=args.channels)
    per = result["per_sample"]
    n_patches = np.array([len(s["seeds"]) for s in result["samples"]])
    print("| method | samples | LE (mm) | AUC (%) | PSNR (dB) | TE (ms) | ms / sample |")
    print("|---|---|---|---|---|---|---|")
    for name in methods:
        print("\n".join(_line(name, per[name], n_patches)))
    for m in METRICS:
        d = np.asarray(per[args.option][m]) - np.asarray(per["one solve"][m])
        print(f"{args.option} − one solve, {m}: {d.mean():+.2f} ± "
              f"{d.std(ddof=1) / np.sqrt(len(d)):.2f}")
    if args.out:
        with open(args.out, "w") as fid:
            json.dump(dict(per_sample=per, n_patches=n_patches.tolist()), fid)


if __name__ == "__main__":
    main()
