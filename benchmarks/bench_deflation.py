"""Paired benchmark of ``LearnedMMInverse(deflate=True)`` against one solve.

    python benchmarks/bench_deflation.py --data sereega --random-sign --n 200 --seed 42

Prints the two methods' metrics, overall and by number of patches, and the paired
differences (deflated − one solve, ± one standard error).
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
    parser.add_argument("--snr", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", default=None, help="JSON file for the per-sample values")
    args = parser.parse_args()
    fwd = _load_forward(None)
    methods = {"one solve": LearnedSolver(args.model),
               "deflate": LearnedSolver(args.model, deflate=True)}
    result = run_benchmark(fwd, data=args.data, n_samples=args.n, snr_db=args.snr,
                           methods=methods, seed=args.seed, random_sign=args.random_sign)
    per = result["per_sample"]
    n_patches = np.array([len(s["seeds"]) for s in result["samples"]])
    print("| method | samples | LE (mm) | AUC (%) | PSNR (dB) | TE (ms) | ms / sample |")
    print("|---|---|---|---|---|---|---|")
    for name in methods:
        print("\n".join(_line(name, per[name], n_patches)))
    for m in METRICS:
        d = np.asarray(per["deflate"][m]) - np.asarray(per["one solve"][m])
        print(f"deflate − one solve, {m}: {d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}")
    if args.out:
        with open(args.out, "w") as fid:
            json.dump(dict(per_sample=per, n_patches=n_patches.tolist()), fid)


if __name__ == "__main__":
    main()
