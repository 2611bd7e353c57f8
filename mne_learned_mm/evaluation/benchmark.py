"""Benchmark of inverse methods on simulated EEG (DESIGN §5-§6).

Command line::

    python -m mne_learned_mm.evaluation.benchmark --data sereega --n 500 --snr 5 \\
        --methods MNE dSPM sLORETA eLORETA MxNE gamma_map learned_mm [--fwd file-fwd.fif] \\
        [--model learned_mm=PATH 4dvarnet=PATH] [--train-data sereega|nmm | --cross] \\
        [--snr-sweep 0,5,10,20] [--channels 90|64|32] [--seed 42] [--random-sign] \\
        [--out-dir DIR]

Protocol, fixed so that runs are comparable:

- test samples ``0 .. n-1`` of
  :class:`mne_learned_mm.simulation.SimulatedDataset` with ``seed`` (42 by
  default, a set not used for training), on the forward's channels or a
  subset (see :func:`select_channels`); the SNR sweep reuses the same sources;
- each sample becomes an :class:`mne.EvokedArray` (``nave=1``) with an applied
  average-reference projector, solved by every method through
  ``method(evoked, fwd, noise_cov)``;
- ``noise_cov`` is diagonal, ``σ² I`` with ``σ²`` the true white-noise
  variance of *that* sample: ``‖Y − L X‖²_F / ((n_channels − 1) n_times)``
  (the simulated noise is white per channel, then average referenced, which
  removes one of the ``n_channels`` dimensions). For the ``"evoked"`` kind,
  whose noise also holds correlated brain background, this is the diagonal
  level of that noise. The learned solvers get no covariance (as trained);
- metrics are those of :mod:`mne_learned_mm.evaluation.metrics`, averaged
  over the seeds of a sample, then mean and sd over samples; time is the
  wall-clock time of the method call per sample (ms), on one BLAS thread by
  default (``--n-threads``), caches included (see
  :class:`~mne_learned_mm.evaluation.methods.MinimumNorm`).

Outputs (in ``--out-dir``): a markdown table (``.md``), a JSON file with the
full configuration and every per-sample value (NaN written as ``null``,
infinities as the strings ``"inf"``/``"-inf"``), and a PNG of box plots.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import mne
import numpy as np
from mne.utils import logger, verbose

from .._forward import read_forward as _load_forward  # the name benchmarks/ import
from .methods import (
    CLASSICAL,
    DEFAULT_MODELS,
    LEARNED,
    available_methods,
    make_method,
    stc_to_array,
)
from .metrics import FOUND, METRIC_UNITS, METRICS, compute_metrics, summarize_metrics

CHANNEL_SETS = {64: "biosemi64", 32: "biosemi32"}
"""Standard caps whose electrode names define the 64- and 32-channel subsets."""


# -- channels ---------------------------------------------------------------------------
def _farthest_points(pos, n, first):
    chosen = [first]
    dist = np.linalg.norm(pos - pos[first], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pos - pos[nxt], axis=1))
    return chosen


def select_channels(info, n_channels):
    """Deterministic, spatially spread subset of the EEG channels.

    The electrodes of the BioSemi cap of that size (``biosemi64`` /
    ``biosemi32`` montages of MNE, 10-10 names) when all of them are in
    ``info`` (true for the 90-channel default montage); otherwise farthest-point
    sampling on the electrode positions, starting from the top-most electrode.

    Parameters
    ----------
    info : mne.Info
        Measurement info with EEG channel positions.
    n_channels : int
        Number of channels to keep.

    Returns
    -------
    ch_names : list of str
        Channel names, in the order of ``info``.
    """
    picks = mne.pick_types(info, meg=False, eeg=True, exclude="bads")
    names = [info["ch_names"][k] for k in picks]
    if not 2 <= n_channels <= len(names):
        raise ValueError(f"n_channels must be in [2, {len(names)}], got {n_channels}")
    if n_channels == len(names):
        return names
    if n_channels in CHANNEL_SETS:
        cap = mne.channels.make_standard_montage(CHANNEL_SETS[n_channels]).ch_names
        if set(cap) <= set(names):
            return [ch for ch in names if ch in cap]
    pos = np.array([info["chs"][k]["loc"][:3] for k in picks])
    chosen = set(_farthest_points(pos, n_channels, int(np.argmax(pos[:, 2]))))
    return [ch for k, ch in enumerate(names) if k in chosen]


def _subset_info(fwd, n_channels):
    from ..simulation.leadfield import make_info, pick_eeg_channels

    ch_names = pick_eeg_channels(fwd)
    if n_channels is None or n_channels == len(ch_names):
        return None
    info = make_info(fwd, ch_names, 1000.0)
    return mne.pick_info(info, mne.pick_channels(info["ch_names"],
                                                 select_channels(info, n_channels),
                                                 ordered=True))


# -- one sample ---------------------------------------------------------------------------
def sample_evoked(Y, info, tmin=0.0):
    """Evoked of one simulated sample, average reference as an applied projector.

    Parameters
    ----------
    Y : array, shape (n_channels, n_times)
        Sensor data in V.
    info : mne.Info
        Channels of ``Y``.
    tmin : float
        Time of the first sample in s.

    Returns
    -------
    evoked : mne.EvokedArray
        With ``nave=1``.
    """
    evoked = mne.EvokedArray(np.asarray(Y, np.float64), info, tmin=tmin, nave=1,
                             verbose=False)
    evoked.set_eeg_reference("average", projection=True, verbose=False)
    return evoked.apply_proj(verbose=False)


def noise_variance(Y, X, L):
    """Per-channel variance of white sensor noise, from the average-referenced residual.

    Parameters
    ----------
    Y : array, shape (n_channels, n_times)
        Noisy average-referenced data.
    X : array, shape (n_sources, n_times)
        True sources.
    L : array, shape (n_channels, n_sources)
        Average-referenced leadfield.

    Returns
    -------
    sigma2 : float
        ``‖Y − L X‖²_F / ((n_channels − 1) n_times)``.
    """
    Y, X, L = (np.asarray(a, np.float64) for a in (Y, X, L))
    resid = Y - L @ X
    return float(np.sum(resid**2) / ((Y.shape[0] - 1) * Y.shape[1]))


def white_noise_cov(sigma2, ch_names):
    """Diagonal noise covariance ``σ² I``.

    Parameters
    ----------
    sigma2 : float
        Noise variance in V².
    ch_names : list of str
        Channels.

    Returns
    -------
    cov : mne.Covariance
    """
    return mne.Covariance(np.full(len(ch_names), float(sigma2)), list(ch_names), [], [],
                          nfree=1, verbose=False)


# -- the benchmark -------------------------------------------------------------------------
def _make_methods(methods, options):
    return {name: make_method(name, **options.get(name, {})) for name in methods}


@verbose
def run_benchmark(fwd, *, data="sereega", n_samples=500, snr_db=5.0, methods=CLASSICAL,
                  seed=42, n_channels=None, method_options=None, n_threads=1,
                  random_sign=False, verbose=None):
    """Evaluate inverse methods on simulated samples.

    Parameters
    ----------
    fwd : mne.Forward
        Fixed-orientation surface forward (sources and channels).
    data : "sereega" | "nmm" | "evoked"
        Simulation kind.
    n_samples : int
        Number of test samples.
    snr_db : float | tuple of float | None
        SNR in dB (or an interval); ``None``: the kind's default.
    methods : list of str | dict
        Method names (see :func:`~mne_learned_mm.evaluation.methods.available_methods`)
        or ``{name: callable(evoked, fwd, noise_cov) -> stc}``.
    seed : int
        Seed of the test set.
    n_channels : int | None
        Keep a subset of this many channels (see :func:`select_channels`).
    method_options : dict | None
        ``{name: {option: value}}`` for
        :func:`~mne_learned_mm.evaluation.methods.make_method`.
    n_threads : int | None
        Limit of BLAS threads while solving (needs ``threadpoolctl``; ``None``
        leaves it alone). One thread is fastest: the problems are small and
        several threads on shared cores slow MNE's solvers down many-fold.
    random_sign : bool
        Draw each patch's polarity at random (``"sereega"`` and ``"nmm"``;
        the ``"evoked"`` components always have random polarities). The
        authors' protocol has positive SEREEGA sources only.
    %(verbose)s

    Returns
    -------
    result : dict
        ``dataset`` (its description), ``samples`` (seeds, SNR and noise
        variance per sample), ``per_sample`` ``{method: {metric: list}}`` with
        ``"ms"`` the time per sample, ``summary`` ``{method: {metric:
        {mean, sd, n, ...}}}`` and ``methods`` (repr of each callable).
    """
    from ..simulation import SimulatedDataset, default_config

    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    config = default_config(data, random_sign=True) if random_sign else None
    if isinstance(methods, dict):
        callables = dict(methods)
    else:
        callables = _make_methods(list(methods), method_options or {})
    ds = SimulatedDataset(fwd, kind=data, n_samples=n_samples, seed=seed, snr_db=snr_db,
                          info=_subset_info(fwd, n_channels), config=config, verbose=False)
    keys = METRICS + (FOUND, "ms")
    per_sample = {name: {key: [] for key in keys} for name in callables}
    samples = []
    logger.info(f"Benchmark: {ds!r}, methods {list(callables)}")
    with _thread_limit(n_threads):
        _solve_all(ds, fwd, callables, per_sample, samples)
    summary = {name: summarize_metrics([dict(zip(keys, v)) for v in zip(*values.values())])
               for name, values in per_sample.items()}
    solver_warnings = {name: dict(getattr(m, "warnings_", {})) for name, m in callables.items()}
    return dict(dataset=ds.describe(), samples=samples, per_sample=per_sample,
                summary=summary, methods={name: repr(m) for name, m in callables.items()},
                solver_warnings=solver_warnings)


def _solve_all(ds, fwd, callables, per_sample, samples):
    pos, adjacency = ds.geometry.pos, ds.geometry.adjacency
    for i in mne.utils.ProgressBar(range(len(ds)), mesg=f"{ds.kind} samples"):
        sample = ds[i]
        X = np.asarray(sample["X"], np.float64)
        sigma2 = noise_variance(sample["Y"], X, ds.L)
        evoked = sample_evoked(sample["Y"], ds.info, ds.tmin)
        cov = white_noise_cov(sigma2, ds.info["ch_names"])
        samples.append(dict(index=i, seeds=sample["seeds"].tolist(),
                            orders=np.asarray(sample.get("orders", [])).tolist(),
                            snr_db=float(sample.get("snr_db", np.nan)), noise_var=sigma2))
        for name, method in callables.items():
            t0 = time.perf_counter()
            stc = method(evoked, fwd, cov)
            elapsed = 1e3 * (time.perf_counter() - t0)
            X_hat = stc_to_array(stc, fwd)
            if X_hat.shape != X.shape:
                raise RuntimeError(f"{name} returned {X_hat.shape[1]} time samples, "
                                   f"expected {X.shape[1]}")
            values = compute_metrics(X, X_hat, sample["seeds"], sample["patches"], pos,
                                     adjacency, ds.sfreq)
            for key, value in values.items():
                per_sample[name][key].append(value)
            per_sample[name]["ms"].append(elapsed)


# -- outputs ---------------------------------------------------------------------------
_FORMATS = {"LE": "{:.2f}", "AUC": "{:.2f}", "nMSE": "{:.4f}", "PSNR": "{:.2f}",
            "TE": "{:.2f}", FOUND: "{:.1f}", "ms": "{:.1f}"}
_TITLES = {FOUND: "peak in zone (%)", "ms": "ms / sample"}


def format_table(summaries):
    """Markdown table of mean ± sd per metric and method.

    Parameters
    ----------
    summaries : dict
        ``{snr_label: {method: summary}}`` with summaries as returned in
        ``run_benchmark(...)["summary"]``.

    Returns
    -------
    table : str
        One row per (SNR, method): the five metrics, the percentage of seeds
        with an estimated peak in their zone and the time per sample; ``†``
        marks means leaving out non-finite values (their count follows).
    """
    keys = METRICS + (FOUND, "ms")
    heads = [_TITLES.get(m) or (f"{m} ({METRIC_UNITS[m]})" if METRIC_UNITS[m] else m)
             for m in keys]
    lines = ["| SNR (dB) | Method | " + " | ".join(heads) + " |",
             "|---|---|" + "---|" * len(keys)]
    for snr, by_method in summaries.items():
        for name, summary in by_method.items():
            cells = []
            for key in keys:
                s, fmt = summary[key], _FORMATS[key]
                cell = f"{fmt.format(s['mean'])} ± {fmt.format(s['sd'])}"
                if s["n_nan"] or s["n_inf"]:
                    cell += f" † ({s['n_nan'] + s['n_inf']} left out)"
                cells.append(cell)
            lines.append(f"| {snr} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(per_sample, fname=None, title=None):
    """Box plots of every metric (and time) per method.

    Parameters
    ----------
    per_sample : dict
        ``{method: {metric: list}}`` as in ``run_benchmark(...)["per_sample"]``.
    fname : path-like | None
        Where to save the PNG.
    title : str | None
        Figure title.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib

    if fname is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = METRICS + (FOUND, "ms")
    names = list(per_sample)
    fig, axes = plt.subplots(2, 4, figsize=(6 + 1.6 * len(names), 7), layout="constrained")
    for ax, key in zip(axes.ravel(), keys):
        values = [np.asarray(per_sample[n][key], float) for n in names]
        values = [v[np.isfinite(v)] for v in values]
        ax.boxplot(values, tick_labels=names, showfliers=True)
        unit = METRIC_UNITS.get(key)
        ax.set_title(_TITLES.get(key) or (f"{key} ({unit})" if unit else key))
        ax.tick_params(axis="x", labelrotation=45)
        if key == "ms":
            ax.set_yscale("log")
    axes.ravel()[-1].set_axis_off()
    if title:
        fig.suptitle(title)
    if fname is not None:
        fig.savefig(fname, dpi=100)
        plt.close(fig)
    return fig


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        if np.isnan(obj):
            return None
        if np.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(obj)
    return obj


# -- command line ---------------------------------------------------------------------------
def _parse_models(items, methods):
    models = {}
    for item in items or []:
        name, sep, model = item.partition("=")
        if not sep:
            name, model = "learned_mm", item
        if name not in LEARNED:
            raise SystemExit(f"--model {item!r}: method must be one of {LEARNED}")
        if name in models:
            raise SystemExit(f"--model: two models given for {name!r}")
        models[name] = model
    for name in models:
        if name not in methods:
            logger.info(f"Adding {name!r} to the methods (a model was given)")
            methods.append(name)
    return models


def default_models_here():
    """The default models of the learned methods that are installed.

    The packaged models (:func:`mne_learned_mm.list_models`); other models
    are given with ``--model METHOD=PATH``.

    Returns
    -------
    models : dict
        ``{(method, train_data): model name}``.
    """
    from ..pretrained import list_models

    packaged = set(list_models())
    return {key: name for key, name in DEFAULT_MODELS.items() if name in packaged}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {value}")
    return value


def _parser(models=None):
    models = default_models_here() if models is None else models
    learned_here = [m for m in LEARNED if any(k[0] == m for k in models)]
    train_kinds = sorted({td for (m, td) in models if m == "learned_mm"})
    parser = argparse.ArgumentParser(
        prog="python -m mne_learned_mm.evaluation.benchmark",
        description="Benchmark EEG inverse methods on simulated data (LE, AUC, nMSE, "
                    "PSNR, TE and time per sample).")
    parser.add_argument("--data", default="sereega", choices=("sereega", "nmm", "evoked"),
                        help="simulation kind of the test set")
    parser.add_argument("--n", type=_positive_int, default=500,
                        help="number of test samples")
    parser.add_argument("--snr", type=float, default=None,
                        help="SNR in dB (default: the kind's, 5 dB; 5-20 dB for nmm)")
    parser.add_argument("--snr-sweep", default=None,
                        help="comma-separated SNRs in dB, e.g. 0,5,10,20 (overrides --snr)")
    others = [m for m in LEARNED if m not in learned_here]
    parser.add_argument("--methods", nargs="+", default=list(CLASSICAL) + ["learned_mm"],
                        help=f"methods among {list(CLASSICAL) + learned_here}"
                        + (f" ({', '.join(others)} with --model {others[0]}=PATH)"
                           if others else "")
                        + f" (default: {' '.join(CLASSICAL)} learned_mm)")
    parser.add_argument("--fwd", default=None,
                        help="forward solution file (default: fsaverage ico3, 90 channels)")
    parser.add_argument("--model", nargs="+", default=None, metavar="[METHOD=]MODEL",
                        help="model name or directory of a learned method (learned_mm by "
                             "default, or 4dvarnet=PATH)")
    if len(train_kinds) > 1:  # only when models trained on several kinds exist here
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--train-data", default=None, choices=train_kinds,
                           help="training set of the default learned models (default: "
                                "--data, sereega for evoked)")
        group.add_argument("--cross", action="store_true",
                           help="use the models trained on the other kind (sereega <-> nmm)")
    parser.add_argument("--channels", type=int, default=None,
                        help="use a spread subset of 64 or 32 of the channels")
    parser.add_argument("--seed", type=int, default=42, help="seed of the test set")
    parser.add_argument("--random-sign", action="store_true",
                        help="random patch polarities (sereega/nmm; evoked always has them)")
    parser.add_argument("--mxne-alpha", type=float, default=50.0,
                        help="MxNE regularisation in %% of alpha_max")
    parser.add_argument("--gamma-alpha", type=float, default=1.0,
                        help="gamma-MAP noise variance in whitened units")
    parser.add_argument("--n-threads", type=int, default=1,
                        help="BLAS threads (needs threadpoolctl; 1 is fastest for these "
                             "small problems)")
    parser.add_argument("--out-dir", default="benchmark_results", help="output directory")
    parser.add_argument("--tag", default=None, help="name of the output files")
    parser.add_argument("--verbose", action="store_true", help="log progress")
    return parser


def _thread_limit(n_threads):
    if n_threads is None:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        logger.info("threadpoolctl not installed: set OMP_NUM_THREADS=1 for speed")
        return nullcontext()
    return threadpool_limits(n_threads)


def _train_data(args):
    if getattr(args, "cross", False):
        if args.data == "evoked":
            raise SystemExit("--cross needs --data sereega or nmm")
        return "nmm" if args.data == "sereega" else "sereega"
    if getattr(args, "train_data", None) is not None:
        return args.train_data
    return "nmm" if args.data == "nmm" else "sereega"


def main(argv=None):
    """Run the benchmark command line.

    Parameters
    ----------
    argv : list of str | None
        Arguments (``None``: ``sys.argv``).

    Returns
    -------
    files : dict
        Paths of the written ``md``, ``json`` and ``png`` files.
    """
    here = default_models_here()
    args = _parser(here).parse_args(argv)
    mne.set_log_level("INFO" if args.verbose else "WARNING")
    methods = list(dict.fromkeys(args.methods))
    models = _parse_models(args.model, methods)
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        raise SystemExit(f"Unknown method(s) {unknown}; available: {available_methods()}")
    train_data = _train_data(args)
    options = {"MxNE": {"alpha": args.mxne_alpha}, "gamma_map": {"alpha": args.gamma_alpha}}
    for name in LEARNED:
        model = models.get(name) or here.get((name, train_data))
        if name in methods and model is None:
            raise SystemExit(
                f"No {name!r} model trained on {train_data!r} on this machine; give one with "
                f"--model {name}=PATH (models here: "
                f"{', '.join(f'{m} ({td})' for m, td in sorted(here)) or 'none'})")
        options[name] = {"model": model, "train_data": train_data}
    snrs = ([float(s) for s in args.snr_sweep.split(",")] if args.snr_sweep
            else [args.snr])
    t_start = time.perf_counter()
    try:
        callables = _make_methods(methods, options)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    fwd = _load_forward(args.fwd)
    runs = []
    for snr in snrs:
        result = run_benchmark(fwd, data=args.data, n_samples=args.n, snr_db=snr,
                               methods=callables, seed=args.seed, n_channels=args.channels,
                               n_threads=args.n_threads, random_sign=args.random_sign)
        result["snr_db"] = result["dataset"]["snr_db"]
        runs.append(result)
    runtime = time.perf_counter() - t_start
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_ch = len(runs[0]["dataset"]["ch_names"])
    signs = "_signs" if args.random_sign and args.data != "evoked" else ""
    tag = args.tag or f"{args.data}{signs}_{n_ch}ch_n{args.n}_seed{args.seed}"
    config = dict(
        argv=list(sys.argv[1:] if argv is None else argv), args=vars(args),
        methods=methods, train_data=train_data, method_reprs=runs[0]["methods"],
        noise_cov="per sample: diagonal, true white-noise variance "
                  "||Y - L X||^2 / ((n_channels - 1) n_times); none for learned methods",
        forward=dict(fname=args.fwd, n_channels=len(fwd["info"]["ch_names"]),
                     n_sources=int(fwd["nsource"])),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=dict(node=platform.node(), processor=platform.processor() or
                     platform.machine(), cpu_count=os.cpu_count(),
                     python=platform.python_version(), n_threads=args.n_threads),
        versions=dict(mne=mne.__version__, numpy=np.__version__),
        runtime_s=runtime)
    summaries = {_snr_label(r["snr_db"]): r["summary"] for r in runs}
    table = format_table(summaries)
    files = dict(md=out_dir / f"{tag}.md", json=out_dir / f"{tag}.json",
                 png=out_dir / f"{tag}.png")
    header = (f"Benchmark `{tag}`: {args.data}, {args.n} samples, {n_ch} channels, "
              f"seed {args.seed}, {config['date']}, {runtime:.0f} s total\n\n")
    files["md"].write_text(header + table + "\n")
    with open(files["json"], "w") as fid:
        json.dump(_jsonable(dict(config=config, runs=runs)), fid, indent=1)
    if len(runs) == 1:
        plot_results(runs[0]["per_sample"], files["png"], title=tag)
    else:
        files.pop("png")
        for r in runs:
            label = _snr_label(r["snr_db"])
            files[f"png_{label}"] = out_dir / f"{tag}_snr{label}.png"
            plot_results(r["per_sample"], files[f"png_{label}"], title=f"{tag}, {label} dB")
    print(header + table)
    print(f"\nWrote {', '.join(str(f) for f in files.values())}")
    return files


def _snr_label(snr):
    if np.ndim(snr):
        return "-".join(f"{s:g}" for s in snr)
    return f"{snr:g}"


if __name__ == "__main__":  # pragma: no cover
    main()
