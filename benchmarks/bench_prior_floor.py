"""What limits a learned solver: its prior Φ, its start, the noise, or the MM steps.

    python benchmarks/bench_prior_floor.py --model default --data sereega --n 200 --seed 42
    python benchmarks/bench_prior_floor.py --random-sign --n 100 --seed 2024
    python benchmarks/bench_prior_floor.py --n-iter 10 --n 150 --seed 2024

For each sample, five estimates are scored with the benchmark metrics:

- ``Φ(X)``: the autoencoder applied to the true sources, i.e. what the
  regulariser ``1 − cos(X, Φ(X))`` of ``u`` considers a plausible pattern near
  the truth.
- ``start, noise-free``: the solver's start (``Φ(K Y)`` for the shipped model)
  on noise-free data ``Y = L X``.
- ``solve, noise-free``: the whole solve on ``L X``.
- ``solve, SNR``: the whole solve on the noisy data, as in the benchmark (no
  noise covariance; average reference; the scale is irrelevant to the
  cosine costs).
- ``solve, SNR, Φ = truth``: the same solve with Φ replaced by the constant
  map to the true sources (zero Jacobian, so every bound and the descent
  certificate stay valid): how far the MM steps carry the start when the
  prior points at the answer, i.e. whether the steps or Φ limit the solve.

A second table gives the lower-level cost ``u`` (and its data and prior terms)
on the noisy data at three points: the start ``X0``, the true sources (scaled
by least squares to the data) and the end of the solve, with the share of
samples where the truth costs less than the start. Descent on ``u`` can
only carry the start towards the truth where ``u(X) < u(X0)``.

The gap between rows 4 and 3 is what the noise costs, between rows 3 and 2
what the MM steps add to the start (``benchmarks/RESULTS.md``, eighth
session), between rows 5 and 4 what a better Φ could buy. ``--n-iter``
overrides the model's number of MM steps (the packaged model's is 0: its
start alone).
"""

import argparse

import numpy as np
import torch

from mne_learned_mm.evaluation.benchmark import _load_forward
from mne_learned_mm.evaluation.metrics import compute_metrics
from mne_learned_mm.pretrained import load_model, source_patches
from mne_learned_mm.simulation import SimulatedDataset, default_config
from mne_learned_mm.solver.init import fitted_scale, normalise_problem
from mne_learned_mm.solver.objective import lower_cost_terms

ESTIMATES = ("Φ(X)", "start, noise-free", "solve, noise-free", "solve, SNR",
             "solve, SNR, Φ = truth")
POINTS = ("start X0", "truth X", "solve")


class _Truth(torch.nn.Module):
    """Φ replaced by the constant map to the true sources ``X`` (1, n_sources, n_times)."""

    def __init__(self, X):
        super().__init__()
        self.X = X

    def forward(self, X):
        return self.X.to(X.dtype).expand_as(X)

    def lipschitz_bound(self, differentiable=False):
        return 0.0  # a constant map: the analytic bounds hold with zero derivatives

    second_derivative_bound = lipschitz_bound


def _estimates(pipe, X, Y, L):
    """The five estimates of one sample, shape (n_sources, n_times) each, and the cost
    terms ``(u, data, prior)`` on the noisy data at each of :data:`POINTS`."""
    X = X / X.norm()
    Y_clean, L = normalise_problem((L @ X)[None], L)
    Y_noisy, _ = normalise_problem(Y[None], L)
    prior = pipe.module.prior
    with torch.no_grad():
        out = [prior(X[None]), pipe.start(Y_clean, L), pipe.solve(Y_clean, L)[0],
               pipe.solve(Y_noisy, L)[0]]
        points = (pipe.start(Y_noisy, L), X[None] * fitted_scale(Y_noisy, L @ X[None]), out[3])
        costs = [_cost_terms(P, Y_noisy, L, prior, pipe.module.config.lam) for P in points]
        pipe.module.prior = _Truth(X[None])
        try:
            out.append(pipe.solve(Y_noisy, L)[0])
        finally:
            pipe.module.prior = prior
    return [x[0].double().numpy() for x in out], costs


def _cost_terms(X, Y, L, prior, lam):
    """``(u, 1 − cos(Y, L X), 1 − cos(X, Φ(X)))`` of one sample."""
    u, stats = lower_cost_terms(X, Y, L, prior, lam)
    return u.item(), 1 - stats["cos_data"].item(), 1 - stats["cos_prior"].item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="sereega", choices=("sereega", "nmm", "evoked"))
    parser.add_argument("--random-sign", action="store_true")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--snr", type=float, default=None, help="dB (default: the kind's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-iter", type=int, default=None,
                        help="MM steps of the solves (default: the model's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fwd = _load_forward(None)
    config = default_config(args.data, random_sign=True) if args.random_sign else None
    ds = SimulatedDataset(fwd, kind=args.data, n_samples=args.n, seed=args.seed,
                          snr_db=args.snr, config=config, verbose=False)
    pipe, model_config = load_model(args.model, n_iter=args.n_iter)
    if pipe.start_network is not None:  # the patches of the start's patch set
        pipe.start_network.patches = source_patches(fwd, model_config,
                                                    pipe.start_network.config.patch_orders)
    L = torch.tensor(ds.L - ds.L.mean(axis=0), dtype=torch.float32)
    pos, adjacency = ds.geometry.pos, ds.geometry.adjacency
    scores = {name: [] for name in ESTIMATES}
    costs, n_patches = [], []
    for i in range(len(ds)):
        sample = ds[i]
        X = np.asarray(sample["X"], np.float64)
        Y = sample["Y"] - sample["Y"].mean(axis=0)
        estimates, cost = _estimates(pipe, torch.tensor(X, dtype=torch.float32),
                                     torch.tensor(Y, dtype=torch.float32), L)
        costs.append(cost)
        for name, X_hat in zip(ESTIMATES, estimates):
            scores[name].append(compute_metrics(X, X_hat, sample["seeds"], sample["patches"],
                                                pos, adjacency, ds.sfreq))
        n_patches.append(len(sample["seeds"]))
    n_patches = np.array(n_patches)
    groups = [("all", n_patches > 0)] + [
        (f"{k} patch{'es' if k > 1 else ''}", n_patches == k) for k in np.unique(n_patches)]
    print(f"{ds!r}, model {args.model}, {pipe.module.config.n_iter} MM steps")
    print("| estimate | " + " | ".join(f"{g} (n = {s.sum()}) LE / AUC" for g, s in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for name in ESTIMATES:
        le = np.array([m["LE"] for m in scores[name]])
        auc = np.array([m["AUC"] for m in scores[name]])
        print(f"| {name} | " + " | ".join(f"{le[s].mean():.2f} / {auc[s].mean():.2f}"
                                           for _, s in groups) + " |")
    _print_costs(np.array(costs), pipe.module.config.lam)


def _print_costs(costs, lam):
    """Mean cost terms at each point; costs has shape (n, len(POINTS), 3)."""
    u = costs[..., 0]
    print(f"\nLower-level cost on the noisy data (λ = {lam:g}), mean over the samples:")
    print("| point | u | 1 − cos(Y, L X) | 1 − cos(X, Φ(X)) |")
    print("|---|---|---|---|")
    for k, name in enumerate(POINTS):
        print(f"| {name} | " + " | ".join(f"{costs[:, k, j].mean():.4f}" for j in range(3))
              + " |")
    print(f"Share of samples with u(X) < u(X0): {(u[:, 1] < u[:, 0]).mean():.2f}; "
          f"with u(solve) < u(X): {(u[:, 2] < u[:, 1]).mean():.2f}")


if __name__ == "__main__":
    main()
