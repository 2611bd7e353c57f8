"""Start alone vs start + MM, for several models, on one simulated test set.

    python benchmarks/bench_start.py --n-iter 0 10 --data sereega --n 500 --seed 42 \
        --model previous=runs/previous --model new=default

Each model is solved with each ``--n-iter`` (0: the start alone) on the same
samples, at the array level (average-referenced data, no noise covariance:
what :func:`mne_learned_mm.apply_learned_mm` does without one). Prints one row
per model, precision and iteration count: LE, AUC, PSNR, TE (mean ± sd), the
mean paired difference to the model's first row (± its standard error) for LE
and AUC, the same for LE, AUC and PSNR against the first model's row of the same
precision and iteration count, then the solve time per sample.
``--precision float32 float16`` solves with the start network's weights in
each (``load_model``'s ``precision``).
``--by-share`` adds, per model, the LE of each
patch by its share of the clean data's power, and the same with the other
patches' true contribution subtracted from the data (how well the patch is
found once nothing masks it: what the noise alone allows).
``--sim-conductivity`` simulates the data with a BEM of other conductivities
on the same head and solves with the packaged forward (forward-model
mismatch, as with any real head), ``--sim-jitter MM`` with every electrode
moved along the scalp by a random offset of ``MM`` mm root-mean-square (a
template's coregistration error); ``--sloreta`` adds sLORETA at the array
level (the start's input image, ``lambda2 = 1/9``) on the same samples.
``--max-rank``, ``--residual-passes`` and ``--rotation`` override the start's
inference settings (``--rotation none``: the previous model, bank-v4), for every
model; ``--model NAME=MODEL,KEY=VALUE`` overrides one of them for that model alone
(``--model plain=default,single_source=none``: bank-v9 before the single-source
choice).
"""

import argparse
import time

import mne
import numpy as np
import torch

from mne_learned_mm import make_fsaverage_forward
from mne_learned_mm.evaluation.benchmark import _load_forward, _subset_info
from mne_learned_mm.evaluation.metrics import compute_metrics, localization_error, seed_zone
from mne_learned_mm.pretrained import load_model, source_patches
from mne_learned_mm.simulation import SimulatedDataset, default_config
from mne_learned_mm.simulation.leadfield import make_leadfield
from mne_learned_mm.solver.init import tikhonov_operator
from mne_learned_mm.solver.start import ROTATIONS

METRICS = ("LE", "AUC", "PSNR", "TE")


def _test_set(fwd, args):
    config = default_config(args.data, random_sign=True) if args.random_sign else None
    info = _subset_info(fwd, args.channels) if args.channels else None  # as the CLI
    return SimulatedDataset(fwd, args.data, n_samples=args.n, seed=args.seed,
                            snr_db=args.snr, config=config, info=info, verbose=False)


def _score(solve, ds, items, batch, L):
    L = torch.as_tensor(L)
    rows, seconds = [], 0.0
    geo = ds.geometry
    for first in range(0, len(items), batch):
        chunk = items[first:first + batch]
        Y = torch.as_tensor(np.stack([it["Y"] for it in chunk]))
        t0 = time.perf_counter()
        with torch.no_grad():
            X = solve(Y, L)
        seconds += time.perf_counter() - t0
        rows += [compute_metrics(it["X"], x.double().numpy(), it["seeds"], it["patches"],
                                 geo.pos, geo.adjacency, ds.sfreq)
                 for it, x in zip(chunk, X)]
    return {k: np.array([r[k] for r in rows]) for k in METRICS}, 1e3 * seconds / len(items)


SHARES = (0.0, 0.01, 0.03, 0.1, 0.3, 1.01)


def _patch_parts(it, L):
    """Each patch's sources and its share of the clean data's power."""
    parts = []
    for p in it["patches"]:
        Xj = np.zeros_like(it["X"])
        Xj[p] = it["X"][p]
        parts.append(Xj)
    clean = np.linalg.norm(L @ it["X"]) ** 2
    return parts, [np.linalg.norm(L @ Xj) ** 2 / clean for Xj in parts]


def _solve_one(pipe, Y, L):
    with torch.no_grad():
        return pipe.solve(torch.as_tensor(Y[None]), torch.as_tensor(L))[0][0].double().numpy()


def by_share(pipe, ds, items):
    """Rows: share bin, patches, LE, LE with the other patches subtracted."""
    geo, L = ds.geometry, ds.L
    rows = []
    for it in items:
        X_hat = _solve_one(pipe, it["Y"], L)
        parts, shares = _patch_parts(it, L)
        for seed, Xj, share in zip(it["seeds"], parts, shares):
            zone = seed_zone(geo.adjacency, seed, it["patches"])
            alone = _solve_one(pipe, it["Y"] - L @ (it["X"] - Xj), L) if share < 1 else X_hat
            rows.append((share, localization_error(it["X"], X_hat, seed, geo.pos, zone),
                         localization_error(Xj, alone, seed, geo.pos, zone)))
    rows = np.array(rows)
    out = []
    for lo, hi in zip(SHARES[:-1], SHARES[1:]):
        sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        if sel.any():
            out.append((f"{lo:g}-{min(hi, 1):g}", int(sel.sum()), rows[sel, 1].mean(),
                        rows[sel, 2].mean()))
    return out + [("all", len(rows), rows[:, 1].mean(), rows[:, 2].mean())]


def _set_patches(pipe, fwd, config):
    """The patches of the start's patch set, on the solving forward's sources (as
    :meth:`~mne_learned_mm.LearnedMMInverse.fit` sets them)."""
    if pipe.start_network is not None:
        pipe.start_network.patches = source_patches(fwd, config,
                                                    pipe.start_network.config.patch_orders)


def _learned(pipe):
    return lambda Y, L: pipe.solve(Y, L)[0]


def _sloreta(L):
    """sLORETA image of the average-referenced data (the start's input operator),
    its operator prepared once, as a user of MNE would."""
    K = tikhonov_operator(torch.as_tensor(L, dtype=torch.float64), 1.0 / 9.0, "sloreta")

    def solve(Y, L):
        Y = Y.double()
        return K @ (Y - Y.mean(1, keepdim=True))
    return solve


def _forwards(args):
    """The forward that simulates the data and the one that solves it."""
    fwd = _load_forward(args.fwd)
    if args.sim_conductivity is None and args.sim_jitter is None:
        return fwd, fwd
    if args.fwd is not None:
        raise SystemExit("--sim-conductivity and --sim-jitter simulate on the packaged "
                         "fsaverage head: leave --fwd out")
    info = fwd["info"]
    if args.sim_jitter is not None:
        info = _jittered(info, args.sim_jitter * 1e-3, np.random.default_rng(args.seed))
    return make_fsaverage_forward(info, conductivity=args.sim_conductivity,
                                  verbose=False), fwd


def _jittered(info, rms, rng):
    """``info`` with each electrode moved along the scalp (perpendicular to its direction
    from the electrodes' centroid) by a random offset of root-mean-square length ``rms``
    (m): a template's coregistration error."""
    pos = np.array([ch["loc"][:3] for ch in info["chs"]])
    radial = pos - pos.mean(0)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    step = rng.standard_normal(pos.shape)
    step -= (step * radial).sum(1, keepdims=True) * radial
    step *= rms / np.sqrt(np.square(step).sum(1).mean())
    moved = mne.create_info(info["ch_names"], 1000.0, "eeg")  # the rate is not used
    moved.set_montage(mne.channels.make_dig_montage(dict(zip(info["ch_names"], pos + step)),
                                                    coord_frame="head"), verbose=False)
    return moved


def _start(args):
    """The start's inference overrides given on the command line."""
    over = {"max_rank": args.max_rank, "residual_passes": args.residual_passes,
            "rotation": args.rotation}
    return {k: v for k, v in over.items() if v is not None}


def _model_spec(spec, args):
    """``NAME=MODEL[,KEY=VALUE ...]``: the row's name, its model and start overrides."""
    name, _, rest = spec.partition("=")
    model, *pairs = rest.split(",")
    return name, model, {**_start(args), **dict(p.split("=", 1) for p in pairs)}


def _fmt(v):
    return f"{np.nanmean(v):.2f} ± {np.nanstd(v):.2f}"


def _paired(scores, base, keys):
    """Mean paired difference ± its standard error, per metric."""
    return [f"{np.nanmean(scores[k] - base[k]):+.2f} ± "
            f"{np.nanstd(scores[k] - base[k]) / np.sqrt(len(scores[k])):.2f}" for k in keys]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True,
                        metavar="NAME=MODEL[,KEY=VALUE]")
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
    parser.add_argument("--residual-passes", type=int, default=None,
                        help="override the amortized start's residual passes (0: none)")
    parser.add_argument("--rotation", default=None, choices=ROTATIONS,
                        help="override the rotation of the start's temporal components")
    parser.add_argument("--bound", default=None,
                        help="override the MM bound (analytic, hvp, scaled, ...)")
    parser.add_argument("--precision", nargs="+", default=["auto"],
                        choices=("auto", "float32", "float16"),
                        help="the start network's weights (load_model's precision)")
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--sim-conductivity", type=float, nargs=3, default=None,
                        metavar=("BRAIN", "SKULL", "SCALP"),
                        help="simulate with a BEM of these conductivities (S/m), solve "
                             "with the packaged forward")
    parser.add_argument("--sim-jitter", type=float, default=None, metavar="MM",
                        help="simulate with every electrode moved along the scalp by a "
                             "random offset of this root-mean-square length (mm, drawn "
                             "from --seed), solve with the packaged forward")
    parser.add_argument("--sloreta", action="store_true",
                        help="also sLORETA at the array level on the same samples")
    parser.add_argument("--by-share", action="store_true",
                        help="LE per patch by its share of the data's power (start alone)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be >= 1")
    if args.by_share and (args.sim_conductivity, args.sim_jitter) != (None, None):
        parser.error("--by-share needs the data's own forward: leave --sim-conductivity "
                     "and --sim-jitter out")
    torch.set_num_threads(args.n_threads)
    sim, fwd = _forwards(args)
    ds = _test_set(sim, args)
    items = [ds[i] for i in range(len(ds))]
    L = make_leadfield(fwd, ds.info).astype(np.float32)  # the solver's, same channels
    print(f"{ds!r}" + ("" if args.sim_conductivity is None else
                      f", simulated with conductivity {tuple(args.sim_conductivity)}")
          + ("" if args.sim_jitter is None else
             f", simulated with electrodes moved {args.sim_jitter:g} mm (rms)") + "\n")
    print("| model | MM iterations | LE (mm) | AUC (%) | PSNR (dB) | TE (ms) "
          "| ΔLE vs first row | ΔAUC vs first row | ΔLE / ΔAUC / ΔPSNR vs first model "
          "| ms / sample |")
    print("|---|---:|---|---|---|---|---|---|---|---:|")
    first_model = {}
    for spec in args.model:
        name, model, start = _model_spec(spec, args)
        base = None
        for precision in args.precision:
            label = name if len(args.precision) == 1 else f"{name} ({precision})"
            for n_iter in args.n_iter:
                pipe, config = load_model(model, n_iter=n_iter, start=start,
                                          bound=args.bound, precision=precision)
                _set_patches(pipe, fwd, config)
                scores, ms = _score(_learned(pipe), ds, items, args.batch, L)
                base = scores if base is None else base
                delta = _paired(scores, base, ("LE", "AUC"))
                other = first_model.setdefault((precision, n_iter), scores)
                vs_first = " / ".join(_paired(scores, other, ("LE", "AUC", "PSNR")))
                print(f"| {label} | {n_iter} | "
                      + " | ".join(_fmt(scores[k]) for k in METRICS)
                      + f" | {delta[0]} | {delta[1]} | {vs_first} | {ms:.1f} |", flush=True)
    if args.sloreta:
        scores, ms = _score(_sloreta(L), ds, items, args.batch, L)
        print("| sLORETA | | " + " | ".join(_fmt(scores[k]) for k in METRICS)
              + f" | | | | {ms:.1f} |")
    if args.by_share:
        print("\n| model | patch's share of the data power | patches | LE (mm) "
              "| LE, other patches subtracted (mm) |\n|---|---|---:|---|---|")
        for spec in args.model:
            name, model, start = _model_spec(spec, args)
            pipe, config = load_model(model, n_iter=0, start=start)
            _set_patches(pipe, fwd, config)
            for label, count, le, alone in by_share(pipe, ds, items):
                print(f"| {name} | {label} | {count} | {le:.2f} | {alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
