"""Start alone vs start + MM, for several models, on one simulated test set.

    python benchmarks/bench_start.py --n-iter 0 10 --data sereega --n 500 --seed 42 \
        --model previous=benchmarks/models/mm-fsaverage-ico3-sereega-v2 --model new=default

Each model is solved with each ``--n-iter`` (0: the start alone) on the same
samples, at the array level (average-referenced data, no noise covariance:
what :func:`mne_learned_mm.apply_learned_mm` does without one). Prints one row
per model and iteration count: LE, AUC, PSNR, TE (mean ± sd), and the mean
paired difference to the start alone (± its standard error) for LE and AUC,
then the solve time per sample.
"""

import argparse
import time

import numpy as np
import torch

from mne_learned_mm.evaluation.benchmark import _load_forward, _subset_info
from mne_learned_mm.evaluation.metrics import compute_metrics
from mne_learned_mm.pretrained import load_model
from mne_learned_mm.simulation import SimulatedDataset, default_config

METRICS = ("LE", "AUC", "PSNR", "TE")


def _test_set(fwd, args):
    config = default_config(args.data, random_sign=True) if args.random_sign else None
    info = _subset_info(fwd, args.channels) if args.channels else None  # as the CLI
    return SimulatedDataset(fwd, args.data, n_samples=args.n, seed=args.seed,
                            snr_db=args.snr, config=config, info=info, verbose=False)


def _score(pipe, ds, items, batch):
    L = torch.as_tensor(ds.L)
    rows, seconds = [], 0.0
    geo = ds.geometry
    for first in range(0, len(items), batch):
        chunk = items[first:first + batch]
        Y = torch.as_tensor(np.stack([it["Y"] for it in chunk]))
        t0 = time.perf_counter()
        with torch.no_grad():
            X, _ = pipe.solve(Y, L)
        seconds += time.perf_counter() - t0
        rows += [compute_metrics(it["X"], x.double().numpy(), it["seeds"], it["patches"],
                                 geo.pos, geo.adjacency, ds.sfreq)
                 for it, x in zip(chunk, X)]
    return {k: np.array([r[k] for r in rows]) for k in METRICS}, 1e3 * seconds / len(items)


def _fmt(v):
    return f"{np.nanmean(v):.2f} ± {np.nanstd(v):.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL")
    parser.add_argument("--n-iter", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--data", default="sereega", choices=("sereega", "nmm", "evoked"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--snr", type=float, default=None)
    parser.add_argument("--random-sign", action="store_true")
    parser.add_argument("--channels", type=int, default=None, help="spread subset (64, 32)")
    parser.add_argument("--fwd", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-rank", type=int, default=None,
                        help="override the amortized start's most temporal components")
    parser.add_argument("--bound", default=None,
                        help="override the MM bound (analytic, hvp, scaled, ...)")
    parser.add_argument("--n-threads", type=int, default=1)
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be >= 1")
    torch.set_num_threads(args.n_threads)
    fwd = _load_forward(args.fwd)
    ds = _test_set(fwd, args)
    items = [ds[i] for i in range(len(ds))]
    print(f"{ds!r}\n")
    print("| model | MM iterations | LE (mm) | AUC (%) | PSNR (dB) | TE (ms) "
          "| ΔLE vs start | ΔAUC vs start | ms / sample |")
    print("|---|---:|---|---|---|---|---|---|---:|")
    for spec in args.model:
        name, _, model = spec.partition("=")
        base = None
        for n_iter in args.n_iter:
            pipe, config = load_model(model, n_iter=n_iter, max_rank=args.max_rank,
                                       bound=args.bound)
            scores, ms = _score(pipe, ds, items, args.batch)
            base = scores if base is None else base
            delta = [f"{np.nanmean(scores[k] - base[k]):+.2f} ± "
                     f"{np.nanstd(scores[k] - base[k]) / np.sqrt(len(items)):.2f}"
                     for k in ("LE", "AUC")]
            print(f"| {name} | {n_iter} | " + " | ".join(_fmt(scores[k]) for k in METRICS)
                  + f" | {delta[0]} | {delta[1]} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
