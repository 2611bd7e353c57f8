"""Speed and certificate statistics of the solver core (CPU, inference).

Usage::

    python benchmarks/bench_solver.py [--threads 2] [--batch 1 64] [--quick]

Prints markdown tables: milliseconds per solve (s=1284 sources, n=90
sensors, t=64 samples, I=10 iterations) for each bound and the unrolled
baseline under ``torch.no_grad``; certificate statistics of untrained
networks on random data; looseness of the analytic bound against a
converged Hessian power iteration. Random Gaussian lead field and simple
simulated sources: no dependency beyond torch.
"""

import argparse
import math
import os
import platform
import statistics
import time

# Without this, OpenMP threads spin-wait and 2 threads on a shared 2-core
# machine run up to 30x slower than 1 thread. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from mne_learned_mm.solver import (  # noqa: E402
    BOUNDS,
    LearnedMM,
    UnrolledSolver,
    cost_and_grad,
    hessian_bound,
    hessian_power_iteration,
    reference_inverse_curvature,
)
from mne_learned_mm.solver.bounds import paper_nu_hi  # noqa: E402

N_SENSORS, N_SOURCES, N_TIMES, N_ITER = 90, 1284, 64, 10


def make_problem(n_batch, seed=0, snr_db=5.0):
    """Random lead field and data from 1-3 Gaussian-waveform sources per sample."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(N_SENSORS, N_SOURCES, generator=gen)
    X = torch.zeros(n_batch, N_SOURCES, N_TIMES)
    t = torch.arange(N_TIMES, dtype=torch.float32)
    for b in range(n_batch):
        n_active = int(torch.randint(1, 4, (1,), generator=gen))
        idx = torch.randint(0, N_SOURCES, (n_active,), generator=gen)
        centre = 20 + 24 * torch.rand(n_active, 1, generator=gen)
        X[b, idx] = torch.exp(-0.5 * ((t - centre) / 5.0) ** 2)
    M = L @ X
    noise = torch.randn(M.shape, generator=gen)
    scale = M.flatten(1).norm(dim=1) / (noise.flatten(1).norm(dim=1) * 10 ** (snr_db / 20))
    return L, M + scale.view(-1, 1, 1) * noise


def make_solver(kind, seed=0, gain=None):
    torch.manual_seed(seed)
    if kind == "unrolled":
        return UnrolledSolver(N_SOURCES, n_iter=N_ITER)
    solver = LearnedMM(N_SOURCES, n_iter=N_ITER, bound=kind)
    if gain is not None:  # untrained net predicting p̃ ≈ gain · p_ref
        bias = math.log(math.expm1(math.sqrt(gain)))
        with torch.no_grad():
            solver.curvature.head1.bias.fill_(bias)
            solver.curvature.head2.bias.fill_(bias)
    return solver


def time_solve(solver, Y, L, reps):
    with torch.no_grad():
        solver(Y, L)  # warm-up (also fills the layer-norm cache)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _, history = solver(Y, L)
            times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * statistics.median(times), history


def speed_table(batches, threads, quick):
    rows = ["| threads | B | solver | ms / solve (min) | ms / solve (median) | ms / sample |",
            "|---|---|---|---|---|---|"]
    kinds = ["none", "analytic"] if quick else [*BOUNDS, "unrolled"]
    print("\n".join(rows))
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for n_batch in batches:
            L, Y = make_problem(n_batch)
            for kind in kinds:
                reps = 5 if n_batch == 1 else 2
                if kind in ("hvp", "min") and n_batch > 1:
                    reps = 1
                best, median, _ = time_solve(make_solver(kind), Y, L, reps)
                rows.append(f"| {n_threads} | {n_batch} | {kind} | {best:.0f} | {median:.0f} "
                            f"| {best / n_batch:.1f} |")
                print(rows[-1], flush=True)
    return rows


def certificate_table(n_batch, gains):
    rows = ["| bound | p̃ init | steps with shrink (%) | shrinks / step | rejected (%) "
            "| p clipped at ν_hi (%) | median ν_hi / p_ref | u(X0) → u(X_I) |",
            "|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows))
    L, Y = make_problem(n_batch, seed=1)
    for gain in gains:
        for bound in BOUNDS:
            solver = make_solver(bound, seed=1, gain=gain)
            with torch.no_grad():
                X, h = solver(Y, L)
                _, _, stats = cost_and_grad(X, Y, L, solver.prior, return_stats=True)
            p_ref = reference_inverse_curvature(X, L, stats=stats)
            ratio = (h.nu_hi[:, -1] / p_ref).median().item()
            shrink = h.n_shrinks.double()
            rows.append(
                f"| {bound} | {'≈ p_ref' if gain is None else f'≈ {gain:g} p_ref'} "
                f"| {100 * (shrink > 0).double().mean():.1f} | {shrink.mean():.2f} "
                f"| {100 * h.rejected.double().mean():.1f} | {100 * h.frac_hi.mean():.1f} "
                f"| {ratio:.3g} | {h.cost[:, 0].mean():.3f} → {h.cost[:, -1].mean():.3f} |")
            print(rows[-1], flush=True)
    return rows


def looseness_table(n_batch=4, hvp_iters=100):
    """Analytic Hessian bounds at x over a converged power-iteration estimate."""
    rows = ["| point | shipped bound / λ̂_max (median [min, max]) "
            "| Prop. 1 literal / λ̂_max (median [min, max]) |", "|---|---|---|"]
    print("\n".join(rows))
    L, Y = make_problem(n_batch, seed=2)
    solver = make_solver("none", seed=2)
    with torch.no_grad():
        X_end, _ = solver(Y, L)
    X0 = 1e-3 * torch.randn(n_batch, N_SOURCES, N_TIMES, generator=torch.Generator()
                            .manual_seed(3))

    def summary(ratio):
        ratio = ratio.tolist()
        return f"{statistics.median(ratio):.3g} [{min(ratio):.3g}, {max(ratio):.3g}]"

    for name, X in (("X0 (random, 1e-3 scale)", X0), ("X_10 (after a solve)", X_end),
                    ("X0 · 1e3 (unit scale)", 1e3 * X0)):
        lam, _, _ = hessian_power_iteration(X, Y, L, solver.prior, n_iter=hvp_iters)
        ours = hessian_bound(X, Y, L, solver.prior) / lam
        paper = 1.0 / (paper_nu_hi(X, Y, L, solver.prior) * lam)
        rows.append(f"| {name} | {summary(ours)} | {summary(paper)} |")
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--quick", action="store_true", help="fewer solvers, no extras")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}\n")
    print("### ms per solve (s=1284, n=90, t=64, I=10, float32, torch.no_grad)\n")
    speed_table(args.batch, args.threads, args.quick)
    if args.quick:
        return
    torch.set_num_threads(args.threads[0])
    print("\n### Certificate statistics, untrained nets, B=16 random problems\n")
    certificate_table(16, gains=(None, 100.0))
    print("\n### Looseness of the analytic Hessian bounds at x (B=4) "
          "vs power iteration (100 HVPs)\n")
    looseness_table()


if __name__ == "__main__":
    main()
