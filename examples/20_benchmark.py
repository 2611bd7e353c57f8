"""
.. _ex-benchmark:

Benchmark against MNE-Python's inverse methods
==============================================

:func:`mne_learned_mm.evaluation.run_benchmark` simulates test samples with
the protocol of the paper (1 to 3 extended patches with Gaussian event-related
time courses, white sensor noise at 5 dB SNR), solves each one with every
method as an :class:`mne.Evoked` (the classical methods with the true noise
level) and computes the paper's metrics: localisation error (LE), AUC of the
active sources at the peak time, normalised MSE and PSNR of the reconstruction
and time error (TE) of the peak, plus the time per sample.

This run uses 20 samples to stay short; the full benchmark (500 samples,
several data sets and channel counts) is in :doc:`/benchmarks` and runs from
the command line::

    python -m mne_learned_mm.evaluation.benchmark --data sereega --n 500 \\
        --methods MNE dSPM sLORETA eLORETA MxNE gamma_map learned_mm
"""

# %%
import matplotlib.pyplot as plt
import mne

from mne_learned_mm import make_fsaverage_forward
from mne_learned_mm.evaluation import plot_results, run_benchmark
from mne_learned_mm.evaluation.benchmark import format_table

mne.set_log_level("WARNING")

# %%
# Run the benchmark
# -----------------
# Methods are named as in :func:`mne_learned_mm.evaluation.available_methods`:
# MNE's minimum-norm family (``loose=0``, ``depth=0.8``, ``lambda2=1/9``),
# the sparse MxNE, and the packaged learned MM model.
fwd = make_fsaverage_forward()
methods = ["MNE", "dSPM", "sLORETA", "eLORETA", "MxNE", "learned_mm"]
result = run_benchmark(fwd, data="sereega", n_samples=20, snr_db=5.0, methods=methods,
                       seed=42)

# %%
# The table
# ---------
# Mean ± standard deviation over the 20 samples (↓: lower is better for LE,
# nMSE and TE; higher is better for AUC and PSNR). "peak in zone" is the share
# of true patches near which the method put any activity at the peak time.
print(format_table({"5": result["summary"]}))

# %%
# Box plots
# ---------
# One box per method and metric (time on a log scale).
fig = plot_results(result["per_sample"], title="SEREEGA-style sources, 5 dB, 20 samples")
plt.show()
