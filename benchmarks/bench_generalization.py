"""Generalization probe: the shipped model on data unlike its training data.

Each scenario changes one thing relative to the training distribution
(SEREEGA-style Gaussian ERPs, Gaussian patch profiles, 90 channels, 512 Hz,
white noise): the montage (BioSemi 64, EGI 128 and 129 — forwards computed on the
embedded fsaverage head), the sampling rate, the patch profile and size, the
waveform (biphasic, alpha/beta bursts, sustained), the SNR, and the noise
(pink sensor noise, brain background). Every sample goes through the public
API (``Evoked`` + ``Forward`` + noise covariance) exactly like the benchmark
CLI, next to sLORETA and eLORETA, and is scored with the benchmark metrics.
All scenarios use the same seed, so they share their patch draws (positions,
orders, amplitudes) and differ only in what the scenario changes: rows are
paired.

Usage::

    python benchmarks/bench_generalization.py --n 60 --seed 7 [--scenarios a b ...]
"""

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np

from mne_learned_mm.evaluation.benchmark import (
    _thread_limit,
    noise_variance,
    sample_evoked,
    white_noise_cov,
)
from mne_learned_mm.evaluation.methods import make_method, stc_to_array
from mne_learned_mm.evaluation.metrics import compute_metrics, summarize_metrics
from mne_learned_mm.head import make_fsaverage_forward
from mne_learned_mm.simulation.geometry import SourceGeometry
from mne_learned_mm.simulation.leadfield import make_info, make_leadfield
from mne_learned_mm.simulation.noise import NoiseConfig, make_noise, scale_to_snr
from mne_learned_mm.simulation.sources import draw_patches, source_matrix
from mne_learned_mm.simulation.waveforms import gaussian_erp


@dataclass
class Scenario:
    """One departure from the training distribution."""

    what: str
    montage: str = "default"
    sfreq: float = 512.0
    n_times: int = 64
    order: tuple = (1, 5)
    profile: str = "gaussian"
    waveform: str = "erp"
    snr_db: float = 5.0
    noise: NoiseConfig = field(default_factory=NoiseConfig)


SCENARIOS = {
    "reference": Scenario("as trained (random polarity)"),
    "biosemi64": Scenario("BioSemi 64 montage", montage="biosemi64"),
    "egi128": Scenario("EGI HydroCel 128 montage", montage="GSN-HydroCel-128"),
    "egi129": Scenario("EGI HydroCel 129 montage (with Cz)", montage="GSN-HydroCel-129"),
    "sfreq256": Scenario("256 Hz, 32 samples", sfreq=256.0, n_times=32),
    "sfreq1000": Scenario("1000 Hz, 125 samples", sfreq=1000.0, n_times=125),
    "flat": Scenario("flat patch profile", profile="flat"),
    "large": Scenario("large patches (order 6-8)", order=(6, 8)),
    "small": Scenario("point-like patches (order 0-1)", order=(0, 1)),
    "dipoles": Scenario("single dipoles (order 0)", order=(0, 0)),
    "order1": Scenario("smallest trained patches (order 1)", order=(1, 1)),
    "biphasic": Scenario("biphasic waveforms", waveform="biphasic"),
    "burst": Scenario("8-30 Hz bursts, 500 ms at 500 Hz", sfreq=500.0, n_times=250,
                      waveform="burst"),
    "sustained": Scenario("sustained plateaus, 500 ms at 500 Hz", sfreq=500.0,
                          n_times=250, waveform="sustained"),
    "snr0": Scenario("0 dB", snr_db=0.0),
    "snr20": Scenario("20 dB", snr_db=20.0),
    "pink": Scenario("pink sensor noise", noise=NoiseConfig(exponent=1.0)),
    "background": Scenario("brain-background noise",
                           noise=NoiseConfig(background_fraction=1.0)),
}


# -- waveforms ------------------------------------------------------------------------------
def _window(n_times, sfreq):
    times = np.arange(n_times) / sfreq
    return times, times[-1]


def erp(rng, k, n_times, sfreq):
    """Gaussian ERPs with independent centres (middle half), widths and signs."""
    times, dur = _window(n_times, sfreq)
    centres = rng.uniform(0.25, 0.75, k) * dur
    widths = rng.uniform(0.04, 0.08, k)
    return gaussian_erp(times, centres, widths)


def biphasic(rng, k, n_times, sfreq):
    """Derivative-of-Gaussian (N-P) deflections."""
    times, dur = _window(n_times, sfreq)
    centres = rng.uniform(0.3, 0.7, k) * dur
    sd = rng.uniform(0.006, 0.012, k)
    w = -(times[None] - centres[:, None]) / sd[:, None]
    return w * np.exp(-0.5 * w**2)


def burst(rng, k, n_times, sfreq):
    """Oscillatory bursts: 8-30 Hz carrier under a Gaussian envelope."""
    times, dur = _window(n_times, sfreq)
    freq = rng.uniform(8.0, 30.0, k)
    centre = rng.uniform(0.3, 0.7, k) * dur
    sd = rng.uniform(0.04, 0.1, k)
    phase = rng.uniform(0, 2 * np.pi, k)
    env = np.exp(-0.5 * ((times[None] - centre[:, None]) / sd[:, None]) ** 2)
    return env * np.cos(2 * np.pi * freq[:, None] * times[None] + phase[:, None])


def sustained(rng, k, n_times, sfreq):
    """Plateaus with 20-50 ms sigmoid onsets and offsets."""
    times, dur = _window(n_times, sfreq)
    on = rng.uniform(0.1, 0.4, k) * dur
    off = on + rng.uniform(0.3, 0.5, k) * dur
    rise = rng.uniform(0.02, 0.05, k)[:, None] / 4

    def sig(t0):
        return 1.0 / (1.0 + np.exp(-(times[None] - t0[:, None]) / rise))
    return sig(on) - sig(off)


WAVEFORMS = dict(erp=erp, biphasic=biphasic, burst=burst, sustained=sustained)


# -- one scenario ----------------------------------------------------------------------------
def scenario_forward(montage, cache):
    """Forward of a montage on the embedded fsaverage head (ico3)."""
    if montage not in cache:
        if montage == "default":
            cache[montage] = make_fsaverage_forward(verbose=False)
        else:
            mont = mne.channels.make_standard_montage(montage)
            info = mne.create_info(mont.ch_names, 1000.0, "eeg")
            info.set_montage(mont)
            cache[montage] = make_fsaverage_forward(info, verbose=False)
    return cache[montage]


def draw_sample(rng, sc, geometry, L):
    """Sources, noisy average-referenced data and patches of one sample."""
    seeds, orders, patches = draw_patches(rng, geometry, (1, 3), sc.order, 2)
    if sc.profile == "flat":
        profiles = [np.ones(len(p)) for p in patches]
    else:
        profiles = [geometry.patch_amplitude(s, p) for s, p in zip(seeds, patches)]
    amp = rng.uniform(0.3, 1.0, len(seeds)) * rng.choice([-1.0, 1.0], len(seeds))
    waveforms = 1e-8 * amp[:, None] * WAVEFORMS[sc.waveform](rng, len(seeds), sc.n_times,
                                                             sc.sfreq)
    X = source_matrix(geometry.n_sources, patches, profiles, waveforms, np.float64)
    M = L @ X
    Y = M + scale_to_snr(M, make_noise(rng, L, sc.n_times, sc.noise), sc.snr_db)
    return X, Y, seeds, patches


def run_scenario(sc, fwd, methods, n, seed):
    """Per-method metric summaries of ``n`` samples of one scenario."""
    geometry = SourceGeometry.from_forward(fwd)
    L, ch_names = make_leadfield(fwd, return_ch_names=True)
    info = make_info(fwd, ch_names, sc.sfreq)
    rng = np.random.default_rng(seed)
    per = {name: [] for name in methods}
    ms = {name: [] for name in methods}
    for _ in range(n):
        X, Y, seeds, patches = draw_sample(rng, sc, geometry, L)
        evoked = sample_evoked(Y, info)
        cov = white_noise_cov(noise_variance(Y, X, L), ch_names)
        for name, method in methods.items():
            t0 = time.perf_counter()
            stc = method(evoked, fwd, cov)
            ms[name].append(1e3 * (time.perf_counter() - t0))
            per[name].append(compute_metrics(X, stc_to_array(stc, fwd), seeds, patches,
                                             geometry.pos, geometry.adjacency, sc.sfreq))
    out = {}
    for name in methods:
        out[name] = summarize_metrics(per[name])
        out[name]["ms"] = float(np.mean(ms[name]))
    per_sample = {name: {key: [float(v[key]) for v in per[name]] for key in ("LE", "AUC", "TE")}
                  for name in methods}
    return dict(n_channels=len(ch_names), summary=out, per_sample=per_sample)


def format_rows(results, methods):
    """Markdown table: one row per scenario, LE / AUC / TE per method."""
    head = "| scenario | channels | " + " | ".join(
        f"{m} LE / AUC / TE" for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for name, res in results.items():
        cells = []
        for m in methods:
            s = res["summary"][m]
            cells.append(f"{s['LE']['mean']:.2f} / {s['AUC']['mean']:.2f} / "
                         f"{s['TE']['mean']:.2f}")
        lines.append(f"| {name}: {SCENARIOS[name].what} | {res['n_channels']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS),
                        choices=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", default=["learned_mm", "sLORETA", "eLORETA"])
    parser.add_argument("--model", default=None, help="model of learned_mm")
    parser.add_argument("--out", default="generalization.json")
    args = parser.parse_args()
    mne.set_log_level("ERROR")
    opts = {"learned_mm": {"model": args.model}} if args.model else {}
    methods = {m: make_method(m, **opts.get(m, {})) for m in args.methods}
    cache, results = {}, {}
    with _thread_limit(1):
        for name in args.scenarios:
            sc = SCENARIOS[name]
            t0 = time.perf_counter()
            results[name] = run_scenario(sc, scenario_forward(sc.montage, cache), methods,
                                         args.n, args.seed)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    print(format_rows(results, args.methods))


if __name__ == "__main__":
    main()
