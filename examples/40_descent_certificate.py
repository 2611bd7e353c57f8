"""
.. _ex-descent-certificate:

Watch the MM iterations and the descent certificate
===================================================

Each learned MM step ``x ← x − γ p ⊙ ∇u(x)`` uses an inverse curvature ``p``
predicted by the ConvLSTM net and projected below a curvature bound, so that
the step's quadratic surrogate lies above the cost. After each step a descent
certificate checks that it does (``u(x⁺) ≤ u(x) + <g, d> + <d, d/p>/2``);
where it fails, ``p`` is halved and the step retried. So the lower-level cost
``u`` never increases (see :doc:`/how_it_works`).

The shipped model starts from its amortized start; ``n_iter=10`` adds its ten
certified MM steps (the default, ``n_iter=None``, is the model's: the start
alone). :class:`~mne_learned_mm.LearnedMMInverse` keeps the record of its last
solve in ``history_``: here we plot the cost per iteration and where the certificate
had to shrink the steps, with the shipped bound and with the projection's upper
bound switched off (``bound="none"``), where only the certificate keeps the
iterations descending.
"""

# %%
import matplotlib.pyplot as plt
import mne
import numpy as np
from matplotlib.ticker import MaxNLocator

from mne_learned_mm import LearnedMMInverse, make_fsaverage_forward
from mne_learned_mm.simulation import SimulatedDataset

mne.set_log_level("WARNING")

# %%
# Simulated epochs: 16 samples of extended sources at 5 dB SNR, solved in one
# batch.
fwd = make_fsaverage_forward()
ds = SimulatedDataset(fwd, kind="sereega", n_samples=16, seed=3, snr_db=5.0)
data = np.stack([ds[i]["Y"] for i in range(len(ds))]).astype(float)
epochs = mne.EpochsArray(data, ds.info, tmin=ds.tmin)

histories = {}
for label, bound in (("shipped bound", None), ("no upper bound (bound='none')", "none")):
    inv = LearnedMMInverse(n_iter=10, bound=bound).fit(fwd)
    inv.apply(epochs)
    histories[label] = {key: np.asarray(value) for key, value in inv.history_.items()}
    if bound is None:
        print(f"shipped bound: {inv.config_['solver'].get('bound', 'analytic')!r}, "
              f"{histories[label]['cost'].shape[1] - 1} MM iterations")


def shrinks_of(hist):
    """Halvings of p per sample and iteration."""
    return hist["shrinks"] if "shrinks" in hist else hist["n_shrinks"]


# %%
# The cost never increases
# ------------------------
# ``history_["cost"]`` has one row per epoch and one column per iterate (the
# starting point first). Each curve is one sample, shown relative to its
# starting cost; red dots mark iterates reached by a step that the
# certificate had to shrink.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
for ax, (label, hist) in zip(axes, histories.items()):
    cost, shrinks = hist["cost"], shrinks_of(hist)
    ax.plot(np.arange(cost.shape[1]), (cost / cost[:, :1]).T, color="C0", alpha=0.5, lw=1)
    b, i = np.nonzero(shrinks > 0)
    ax.plot(i + 1, cost[b, i + 1] / cost[b, 0], "o", color="C3", ms=4,
            label=f"shrunk step ({len(b)} of {shrinks.size})")
    ax.set(title=label, xlabel="MM iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right")
    print(f"{label}: largest change of u in one step {np.diff(cost, axis=1).max():+.2e}, "
          f"{len(b)} shrunk steps out of {shrinks.size}, "
          f"{int(hist['rejected'].sum())} rejected")
axes[0].set_ylabel("u(x) / u(x₀)")

# %%
# Where the projection and the certificate acted
# ----------------------------------------------
# Left: halvings of ``p`` by the certificate, summed over the 16 samples, per
# iteration. Right: the share of the entries of ``p`` that the projection
# (Eq. 11) clipped at the upper bound ``ν_hi`` (``history_["frac_hi"]``,
# averaged over the samples); without an upper bound nothing is clipped and
# the certificate is the only safeguard.
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
width = 0.4
for k, (label, hist) in enumerate(histories.items()):
    shrinks = shrinks_of(hist)
    iters = np.arange(1, shrinks.shape[1] + 1)
    axes[0].bar(iters + (k - 0.5) * width, shrinks.sum(axis=0), width=width, label=label)
    axes[1].plot(iters, 100 * hist["frac_hi"].mean(axis=0), "o-", label=label)
axes[0].set(xlabel="MM iteration", ylabel="halvings of p (all samples)")
if not any(shrinks_of(hist).any() for hist in histories.values()):
    axes[0].set_ylim(0, 1)
    axes[0].text(0.5, 0.5, "no step needed shrinking", transform=axes[0].transAxes,
                 ha="center", va="center")
for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
axes[1].set(xlabel="MM iteration", ylabel="entries of p at ν_hi (%)")
axes[1].legend()
plt.show()
