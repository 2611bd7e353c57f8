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

:class:`~mne_learned_mm.LearnedMMInverse` keeps the record of its last solve
in ``history_``: here we plot the cost per iteration and where the certificate
had to shrink the steps, with the shipped bound and with the projection's upper
bound switched off (``bound="none"``), where only the certificate keeps the
iterations descending.
"""

# %%
import matplotlib.pyplot as plt
import mne
import numpy as np

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
for bound in (None, "none"):
    inv = LearnedMMInverse(bound=bound).fit(fwd)
    inv.apply(epochs)
    label = f"bound={inv.config_['solver'].get('bound', 'analytic')!r} (trained)" \
        if bound is None else f"bound={bound!r}"
    histories[label] = inv.history_
    print(f"{label}: history_ keys {sorted(inv.history_)}")

# %%
# The cost never increases
# ------------------------
# ``history_["cost"]`` has one row per epoch and one column per iterate (the
# starting point first). Each curve is one sample, shown relative to its
# starting cost.
shrink_key = "shrinks" if "shrinks" in next(iter(histories.values())) else "n_shrinks"
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
for ax, (label, hist) in zip(axes, histories.items()):
    cost = np.asarray(hist["cost"])
    shrinks = np.asarray(hist[shrink_key])
    iters = np.arange(cost.shape[1])
    ax.plot(iters, (cost / cost[:, :1]).T, color="C0", alpha=0.5, lw=1)
    # mark the iterates reached after a shrunk step
    b, i = np.nonzero(shrinks > 0)
    ax.plot(i + 1, cost[b, i + 1] / cost[b, 0], "o", color="C3", ms=4,
            label="step shrunk by the certificate")
    ax.set(title=label, xlabel="MM iteration")
    ax.legend(loc="upper right")
    print(f"{label}: largest cost increase {np.diff(cost, axis=1).max():.2e}, "
          f"{int((shrinks > 0).sum())} shrunk steps out of {shrinks.size}")
axes[0].set_ylabel("u(x) / u(x₀)")

# %%
# Where the certificate acted
# ---------------------------
# Number of halvings of ``p``, summed over the 16 samples, per iteration.
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
width = 0.4
for k, (label, hist) in enumerate(histories.items()):
    shrinks = np.asarray(hist[shrink_key])
    ax.bar(np.arange(1, shrinks.shape[1] + 1) + (k - 0.5) * width, shrinks.sum(axis=0),
           width=width, label=label)
ax.set(xlabel="MM iteration", ylabel="halvings of p (all samples)")
ax.legend()
plt.show()
