"""
.. _ex-custom-montage:

Use the pretrained model with a 64-channel cap
==============================================

The packaged model was trained on the fsaverage ``ico3`` source space with 90
electrodes of the 10-20 system. The solver takes the lead field as an input —
only the source space and the sampling rate are fixed by training — so the
same weights can be used with another electrode cap on the same head, without
retraining. Here we use a BioSemi 64-channel cap and measure the accuracy on
simulated data, next to the 90-channel montage the model was trained with and
to sLORETA.
"""

# %%
import time

import matplotlib.pyplot as plt
import mne
import numpy as np
from mne.minimum_norm import apply_inverse_epochs, make_inverse_operator

from mne_learned_mm import LearnedMMInverse, make_fsaverage_forward
from mne_learned_mm.evaluation.metrics import compute_metrics, summarize_metrics
from mne_learned_mm.simulation import SimulatedDataset

mne.set_log_level("WARNING")

# %%
# A forward model for the 64-channel cap
# --------------------------------------
# :func:`~mne_learned_mm.make_fsaverage_forward` computes the forward model of
# any EEG montage on the packaged fsaverage head (three-layer BEM). The first
# call solves the BEM (a minute or two); BEM and forward are cached on disk.
montage = mne.channels.make_standard_montage("biosemi64")
info = mne.create_info(montage.ch_names, sfreq=512.0, ch_types="eeg")
info.set_montage(montage)
t0 = time.perf_counter()
fwd64 = make_fsaverage_forward(info)
print(f"{fwd64['nchan']} channels x {fwd64['nsource']} sources "
      f"in {time.perf_counter() - t0:.0f} s")
fwd90 = make_fsaverage_forward()  # the montage of the pretrained model
mne.viz.plot_sensors(fwd64["info"], show_names=False, title="BioSemi 64")

# %%
# Simulated test data
# -------------------
# :class:`~mne_learned_mm.simulation.SimulatedDataset` draws each sample from
# its own seeded generator, so the two montages see the same cortical sources
# (1 to 3 extended patches with Gaussian event-related time courses), each
# with white sensor noise at 5 dB SNR.
n_samples = 40


def solve_all(fwd, label):
    """Simulate, solve with learned MM and sLORETA, return the metrics."""
    ds = SimulatedDataset(fwd, kind="sereega", n_samples=n_samples, seed=7, snr_db=5.0)
    items = [ds[i] for i in range(n_samples)]
    epochs = mne.EpochsArray(np.stack([it["Y"] for it in items]).astype(float), ds.info,
                             tmin=ds.tmin)
    epochs.set_eeg_reference("average", projection=True)

    t0 = time.perf_counter()
    inv = LearnedMMInverse().fit(fwd)
    stcs_mm = inv.apply(epochs)
    t_mm = (time.perf_counter() - t0) / n_samples

    # white noise: any diagonal noise covariance gives the same sLORETA maps
    # up to a global factor, to which all the metrics are invariant
    cov = mne.make_ad_hoc_cov(epochs.info)
    op = make_inverse_operator(epochs.info, fwd, cov, loose=0.0,
                               depth=dict(exp=0.8, allow_fixed_depth=True))
    t0 = time.perf_counter()
    stcs_sl = apply_inverse_epochs(epochs, op, lambda2=1.0 / 9.0, method="sLORETA")
    t_sl = (time.perf_counter() - t0) / n_samples

    geo = ds.geometry
    out = {}
    for method, stcs, seconds in (("learned MM", stcs_mm, t_mm), ("sLORETA", stcs_sl, t_sl)):
        rows = [compute_metrics(it["X"], stc.data, it["seeds"], it["patches"], geo.pos,
                                geo.adjacency, ds.sfreq) for it, stc in zip(items, stcs)]
        out[f"{method}, {label}"] = (rows, seconds)
    return out


results = {}
results.update(solve_all(fwd90, "90 ch"))
results.update(solve_all(fwd64, "BioSemi 64"))

# %%
# Accuracy
# --------
# Mean ± standard deviation over the test samples (LE: localisation error of
# each patch's peak; AUC: detection of the active sources at the peak time;
# nMSE and PSNR: normalised reconstruction errors; TE: timing error of the peak).
print(f"{'':<26}{'LE (mm)':>13}{'AUC (%)':>13}{'nMSE':>14}{'PSNR (dB)':>13}"
      f"{'TE (ms)':>12}{'ms/sample':>11}")
for name, (rows, seconds) in results.items():
    s = summarize_metrics(rows)
    cells = "".join(f"{s[k]['mean']:>7.3g} ± {s[k]['sd']:<4.2g}" for k in
                    ("LE", "AUC", "nMSE", "PSNR", "TE"))
    print(f"{name:<26}{cells}{1e3 * seconds:>9.0f}")

# %%
# The localisation error per sample, for both montages:
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
names = list(results)
ax.boxplot([[r["LE"] for r in results[n][0]] for n in names], showmeans=True)
ax.set_xticks(np.arange(1, len(names) + 1), [n.replace(", ", "\n") for n in names])
ax.set_ylabel("localisation error (mm)")
ax.set_title(f"{n_samples} simulated samples, 5 dB SNR")
plt.show()
