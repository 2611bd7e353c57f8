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

from mne_learned_mm import apply_learned_mm, make_fsaverage_forward
from mne_learned_mm.evaluation import run_benchmark
from mne_learned_mm.evaluation.benchmark import format_table
from mne_learned_mm.simulation import simulate_evoked_extended

mne.set_log_level("WARNING")

# %%
# A forward model for the cap
# ---------------------------
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
mne.viz.plot_sensors(info, show_names=True, title="BioSemi 64")

# %%
# Nothing else changes: :func:`~mne_learned_mm.apply_learned_mm` uses the
# channels of the data that are in the forward model, whatever the cap. Here
# on a simulated evoked response:
evoked, stc_true = simulate_evoked_extended(fwd64, snr_db=5.0, random_state=0)
stc = apply_learned_mm(evoked, fwd64)
print(evoked)
print(stc)

# %%
# Measured accuracy
# -----------------
# :func:`~mne_learned_mm.evaluation.run_benchmark` simulates test samples on a
# forward model (here 20, extended patches at 5 dB SNR), solves them and
# computes the paper's metrics. Each sample is drawn from its own seeded
# generator, so both montages see the same cortical sources.
n_samples = 20
summaries, per_sample = {}, {}
for label, fwd in (("10-20, 90 ch", make_fsaverage_forward()), ("BioSemi 64", fwd64)):
    result = run_benchmark(fwd, data="sereega", n_samples=n_samples, snr_db=5.0,
                           methods=["sLORETA", "learned_mm"], seed=42)
    summaries[label] = result["summary"]
    for method, values in result["per_sample"].items():
        per_sample[f"{method}\n{label}"] = values
print(format_table(summaries))

# %%
# The localisation error per sample:
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
names = list(per_sample)
ax.boxplot([per_sample[n]["LE"] for n in names], showmeans=True)
ax.set_xticks(np.arange(1, len(names) + 1), names)
ax.set_ylabel("localisation error (mm)")
ax.set_title(f"{n_samples} simulated samples, 5 dB SNR")
plt.show()
