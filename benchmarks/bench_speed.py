"""Solve time through the MNE front end: the learned solver next to sLORETA.

Usage::

    python benchmarks/bench_speed.py [--threads 1 2] [--n-iter 0 10] [--device cpu] \
        [--precision float32 float16]

For a 90-channel evoked of 64 and of 500 samples: milliseconds per
``LearnedMMInverse.apply`` (model loaded and fitted once, median of repeats)
and per ``mne.minimum_norm.apply_inverse`` with a prepared sLORETA operator;
for 256 epochs of 64 samples: epochs per second in batches (median of 3 after a
warm-up; 1 with the MM steps), and the same with every ``stc.data`` read (the start
alone returns its sources as low-rank factors, which ``stc.data`` multiplies on first
access; sLORETA's are dense already). ``--n-iter 0`` is
the amortized start alone (the shipped default), ``10`` with its ten MM iterations;
``--precision float32 float16`` times each storage of the start network's weights (``auto``,
the default, is float16 on CPU).
"""

import argparse
import contextlib
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / numpy load

import mne  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mne_learned_mm import LearnedMMInverse, make_fsaverage_forward  # noqa: E402


def _blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then OMP_NUM_THREADS decides
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _median_ms(fn, reps):
    fn()  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _rates(solve, n_epochs, reps):
    """Epochs per second of ``solve()``, and with every estimate's ``stc.data`` read."""
    def read():
        for stc in solve():
            stc.data  # noqa: B018 (the product of a low-rank estimate's factors)

    return [1e3 * n_epochs / _median_ms(fn, reps) for fn in (solve, read)]


def _data(fwd, n_times, n_epochs=None, seed=0):
    rng = np.random.default_rng(seed)
    info = mne.create_info(fwd["info"]["ch_names"], 512.0, "eeg")
    info.set_montage(mne.channels.make_dig_montage(
        {ch["ch_name"]: ch["loc"][:3] for ch in fwd["info"]["chs"]}, coord_frame="head"))
    G = fwd["sol"]["data"]
    X = np.zeros((G.shape[1], n_times))
    X[rng.integers(G.shape[1], size=5)] = np.hanning(n_times) * 1e-8
    M = G @ X
    if n_epochs is None:
        inst = mne.EvokedArray(M + 0.3 * M.std() * rng.standard_normal(M.shape), info)
    else:
        data = M[None] + 0.3 * M.std() * rng.standard_normal((n_epochs, *M.shape))
        inst = mne.EpochsArray(data, info, verbose=False)
    return inst.set_eeg_reference("average", projection=True, verbose=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-iter", nargs="+", default=["0", "10"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default")
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=("auto", "float32", "float16"),
                        help="the start network's weights (LearnedMMInverse's precision)")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    fwd = make_fsaverage_forward(verbose=False)
    free = make_fsaverage_forward(fixed=False, verbose=False)
    print(f"# bench_speed — {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, mne {mne.__version__}, "
          f"device {args.device}, model {args.model}\n")
    print("| threads | solver | evoked 90×64 (ms) | evoked 90×500 (ms) | epochs/s (256 × 64) "
          "| epochs/s, stc.data read |")
    print("|---:|---|---:|---:|---:|---:|")
    evokeds = {t: _data(fwd, t) for t in (64, 500)}
    epochs = _data(fwd, 64, n_epochs=256)
    for threads in args.threads:
        torch.set_num_threads(threads)
        with _blas_threads(threads):
            cov = mne.make_ad_hoc_cov(evokeds[64].info, verbose=False)
            inv = mne.minimum_norm.make_inverse_operator(evokeds[64].info, free, cov,
                                                         loose=0.0, depth=0.8, verbose=False)
            inv = mne.minimum_norm.prepare_inverse_operator(inv, 1, 1 / 9, "sLORETA",
                                                            verbose=False)
            row = [_median_ms(lambda e=e: mne.minimum_norm.apply_inverse(
                e, inv, 1 / 9, "sLORETA", prepared=True, verbose=False), args.reps)
                for e in evokeds.values()]
            rates = _rates(lambda: mne.minimum_norm.apply_inverse_epochs(
                epochs, inv, 1 / 9, "sLORETA", prepared=True, verbose=False), len(epochs), 3)
            print(f"| {threads} | sLORETA (prepared operator) | {row[0]:.1f} | {row[1]:.1f} "
                  f"| {rates[0]:.0f} | {rates[1]:.0f} |", flush=True)
            for n_iter in args.n_iter:
                n_iter = None if n_iter == "None" else int(n_iter)
                for precision in args.precision:
                    lmm = LearnedMMInverse(args.model, n_iter=n_iter, device=args.device,
                                           precision=precision, n_jobs=threads,
                                           verbose=False).fit(fwd, verbose=False)
                    row = [_median_ms(lambda e=e: lmm.apply(e, verbose=False),
                                      max(2, args.reps // (1 if n_iter == 0 else 5)))
                           for e in evokeds.values()]
                    rates = _rates(lambda: lmm.apply(epochs, verbose=False), len(epochs),
                                   3 if n_iter == 0 else 1)
                    label = ("start only (n_iter=0)" if n_iter == 0
                             else f"start + MM (n_iter={n_iter or 'model'})")
                    print(f"| {threads} | learned, {label}, {precision} | {row[0]:.1f} "
                          f"| {row[1]:.1f} | {rates[0]:.0f} | {rates[1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
