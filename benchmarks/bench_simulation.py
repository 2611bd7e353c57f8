"""Throughput of the simulation subpackage on one core.

Run::

    python benchmarks/bench_simulation.py            # default fsaverage forward
    python benchmarks/bench_simulation.py --fwd my-fwd.fif
    python benchmarks/bench_simulation.py --figure doc/_static/simulation_waveforms.png

Prints a Markdown table: samples/s per kind (SEREEGA, NMM, evoked), the
DataLoader path (collate, no workers), the patch bank's single topographies
(:class:`~mne_learned_mm.simulation.bank.PatchBank`, batches of 4096) and the
Jansen-Rit spike-bank generation time. BLAS and torch are limited to one thread.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import mne  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mne_learned_mm.simulation import (  # noqa: E402
    NMMConfig,
    SimulatedDataset,
    collate,
    jansen_rit,
    make_spike_bank,
)
from mne_learned_mm.simulation.bank import PatchBank  # noqa: E402

N_SAMPLES = {"sereega": 5000, "nmm": 1000, "evoked": 200}


def _forward(fname):
    if fname is None:
        from mne_learned_mm.head import make_fsaverage_forward

        return make_fsaverage_forward(verbose=False)
    fwd = mne.read_forward_solution(fname, verbose=False)
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True, use_cps=True,
                                        verbose=False)


def _rate(fn, n, repeat=3):
    """Best of ``repeat`` runs of ``fn(n)``, in items per second."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_kind(fwd, kind, n):
    t0 = time.perf_counter()
    ds = SimulatedDataset(fwd, kind, n_samples=10 * n, verbose=False)
    t_init = time.perf_counter() - t0
    ds[0]

    def run(m):
        for i in range(m):
            ds[i]

    s = ds[0]
    return ds, t_init, _rate(run, n), s["Y"].shape, s["X"].shape


def bench_loader(ds, n, batch_size=64):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0,
                                         collate_fn=collate)

    def run(m):
        for k, _ in enumerate(loader):
            if (k + 1) * batch_size >= m:
                break

    return _rate(run, n)


def bench_patch_bank(fwd, batch=4096):
    t0 = time.perf_counter()
    bank = PatchBank.from_forward(fwd)
    t_init = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)

    def run(m):
        for _ in range(m // batch):
            bank.sample(gen, batch)

    y, x = bank.sample(gen, 1)
    return bank, t_init, _rate(run, 20 * batch), tuple(y.shape[1:]), tuple(x.shape[1:])


def bench_bank():
    cfg = NMMConfig()
    t0 = time.perf_counter()
    clips = make_spike_bank(cfg, verbose=False)
    return time.perf_counter() - t0, clips.shape


def figure(fwd, fname):
    """Example time courses of the three kinds and the Jansen-Rit regimes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), layout="constrained")
    for ax, kind, i in zip(axes.flat[:3], ("sereega", "nmm", "evoked"), (1, 0, 4)):
        ds = SimulatedDataset(fwd, kind, n_samples=10, verbose=False)
        s = ds[i]
        times = ds.tmin + np.arange(s["X"].shape[1]) / ds.sfreq
        for seed in s["seeds"]:
            ax.plot(times, 1e9 * s["X"][seed], lw=1.5)
        ax.set(title=f"{kind}: seed time courses ({len(s['seeds'])} patches)",
               xlabel="time (s)", ylabel="nA·m")
    cfg = NMMConfig()
    alpha = jansen_rit(8000, 3.25, config=NMMConfig(p_mean=220.0, p_sigma=2.0), rng=0,
                       decim=4)[500:]
    spikes = jansen_rit(8000, cfg.A_active, config=cfg, rng=0, decim=4)[500:]
    t = np.arange(len(alpha)) / 500.0
    ax = axes[1, 1]
    ax.plot(t, alpha, label="A = 3.25, p = 220/s (alpha)")
    ax.plot(t, spikes, label=f"A = {cfg.A_active}, p = {cfg.p_mean:g}/s (spikes)")
    ax.set(title="Jansen-Rit output y1 - y2", xlabel="time (s)", ylabel="mV")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(fname, dpi=80)
    print(f"figure written to {fname}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fwd", default=None, help="forward file (default: fsaverage ico3)")
    parser.add_argument("--figure", default=None, help="also write example time courses here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fwd = _forward(args.fwd)
    if args.figure:
        figure(fwd, args.figure)
    print(f"# bench_simulation — {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}, mne {mne.__version__}, torch {torch.__version__}, "
          f"1 thread")
    print(f"forward: {len(fwd['info']['ch_names'])} channels x {fwd['nsource']} sources\n")
    print("| what | Y shape | X shape | samples/s | init (s) |")
    print("| --- | --- | --- | ---: | ---: |")
    datasets = {}
    for kind, n in N_SAMPLES.items():
        ds, t_init, rate, y_shape, x_shape = bench_kind(fwd, kind, n)
        datasets[kind] = ds
        print(f"| {kind} (`ds[i]`) | {y_shape} | {x_shape} | {rate:.0f} | {t_init:.2f} |")
    rate = bench_loader(datasets["sereega"], 2048)
    print(f"| sereega DataLoader (batch 64, collate, 0 workers) | | | {rate:.0f} | |")
    bank, t_init, rate, y_shape, x_shape = bench_patch_bank(fwd)
    print(f"| patch bank topographies ({bank.n_patches} patches, `bank.sample`, batch 4096) "
          f"| {y_shape} | {x_shape} | {rate:.0f} | {t_init:.2f} |")
    t_bank, shape = bench_bank()
    print(f"\nJansen-Rit spike bank ({shape[0]} clips x {shape[1]} samples, "
          f"{NMMConfig().n_regions} regions in parallel, stochastic Heun): "
          f"{t_bank:.1f} s (generated once, then cached)")


if __name__ == "__main__":
    main()
