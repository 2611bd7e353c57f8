"""
.. _ex-train:

Train a model for your own montage
==================================

The training subpackage fits the learned MM solver (the autoencoder prior Φ
and the ConvLSTM curvature net) to simulated data for any fixed-orientation
forward model, by bilevel optimisation (Alg. 2 of the paper). Here we train a
small model for a 32-channel BioSemi cap on fsaverage for a minute or two on
a CPU, save it, load it back with
:class:`~mne_learned_mm.LearnedMMInverse` and test it on new simulations.

A few training steps are enough to show the workflow, not to train a good model: the
packaged model was trained for hours (see :doc:`/benchmarks`). The same run
from the command line is::

    python -m mne_learned_mm.training --fwd biosemi32-fwd.fif --out biosemi32-model \\
        --epochs 100 --n-train 8000

and it runs on a GPU (``--device cuda``) or on several processes with
``torchrun``.
"""

# %%
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mne
import numpy as np

from mne_learned_mm import LearnedMMInverse, make_fsaverage_forward
from mne_learned_mm.evaluation.metrics import compute_metrics, summarize_metrics
from mne_learned_mm.simulation import SimulatedDataset
from mne_learned_mm.training import TrainConfig, train

mne.set_log_level("WARNING")

# %%
# The forward model of the cap
# ----------------------------
# The 32 electrodes of the BioSemi cap are all in the 10-20 set of the default
# forward model, so their forward model is a subset of its rows (for any other
# montage, :func:`~mne_learned_mm.make_fsaverage_forward` computes one, see
# :ref:`ex-custom-montage`). The training configuration refers to a forward
# model by its file; the file stores the free-orientation solution, and
# training fixes the orientations normal to the cortex when it reads it.
cap = mne.channels.make_standard_montage("biosemi32").ch_names
fwd = mne.pick_channels_forward(make_fsaverage_forward(), cap, ordered=True)
workdir = Path(tempfile.mkdtemp(prefix="mne_learned_mm_"))
fwd_fname = workdir / "biosemi32-fwd.fif"
mne.write_forward_solution(fwd_fname, mne.convert_forward_solution(fwd, surf_ori=False))
print(fwd)

# %%
# Train
# -----
# :class:`~mne_learned_mm.training.TrainConfig` holds every setting of a run.
# To stay short, this one uses a small solver, small batches and a time
# budget; the model is written to ``out`` after each epoch (weights,
# configuration and the training history).
cfg = TrainConfig(
    data="sereega",            # SEREEGA-style extended sources, Gaussian ERPs
    fwd=str(fwd_fname),
    n_train=8,                 # samples per epoch, simulated on the fly
    n_val=4,
    snr_db=(0.0, 15.0),
    # a small solver: 3 MM iterations (10 in the paper), narrow networks
    solver=dict(n_iter=3, net_hidden=8, net_rank=16, prior_hidden=16),
    epochs=3,
    batch_size=4,
    lr=1e-3,
    time_budget_min=1.5,       # stop (and save) after 1.5 minutes
    num_threads=2,
    out=str(workdir / "biosemi32-model"),
)
t0 = time.perf_counter()
out = train(cfg)
print(f"trained for {(time.perf_counter() - t0) / 60:.1f} min; model files:",
      sorted(p.name for p in Path(out).iterdir()))

# %%
# The training history holds, per epoch, the training loss and the metrics on
# the validation set.
history = json.loads((Path(out) / "history.json").read_text())
columns = ["epoch", "step", "minutes", "train_loss", "val_loss", "LE", "AUC", "nMSE", "PSNR", "TE"]
print("".join(f"{c:>11}" for c in columns))
for row in history:
    print("".join(f"{row[c]:>11.3g}" for c in columns))
history = {c: [row[c] for row in history] for c in columns}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
axes[0].plot(history["epoch"], history["train_loss"], "o-", label="train")
axes[0].plot(history["epoch"], history["val_loss"], "o-", label="validation")
axes[0].set(xlabel="epoch", ylabel="upper-level loss")
axes[0].legend()
axes[1].plot(history["epoch"], history["LE"], "o-", color="C2")
axes[1].set(xlabel="epoch", ylabel="validation LE (mm)")

# %%
# Load the model and test it
# --------------------------
# A model directory is loaded like a packaged model. We compare it on new
# simulations (another seed) with the packaged model, which also works with
# this cap because the solver takes the lead field as an input.
test = SimulatedDataset(fwd, kind="sereega", n_samples=16, seed=1234, snr_db=5.0)
items = [test[i] for i in range(len(test))]
epochs = mne.EpochsArray(np.stack([it["Y"] for it in items]).astype(float), test.info,
                         tmin=test.tmin)
geo = test.geometry
for name, model in (("trained here", out), ("packaged model", "default")):
    inv = LearnedMMInverse(model=model).fit(fwd)
    stcs = inv.apply(epochs)
    rows = [compute_metrics(it["X"], stc.data, it["seeds"], it["patches"], geo.pos,
                            geo.adjacency, test.sfreq) for it, stc in zip(items, stcs)]
    s = summarize_metrics(rows)
    print(f"{name:<22}" + "  ".join(f"{k} {s[k]['mean']:.3g}" for k in s))
