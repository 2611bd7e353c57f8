"""
.. _ex-apply-pretrained:

Apply the pretrained model to a simulated evoked response
=========================================================

Build the default fsaverage forward model, simulate an evoked response from an
extended cortical source, estimate the sources with the packaged learned MM
model and with sLORETA, and compare both with the truth, visually and with the
metrics of the paper (localisation error, AUC, nMSE, PSNR, time error).
"""

# %%
import time

import mne
import nibabel as nib
import numpy as np
from mne.minimum_norm import apply_inverse, make_inverse_operator

from mne_learned_mm import apply_learned_mm, fetch_fsaverage_head, make_fsaverage_forward
from mne_learned_mm.evaluation import compute_metrics
from mne_learned_mm.simulation import SourceGeometry, simulate_evoked_extended

mne.set_log_level("WARNING")

# %%
# The forward model
# -----------------
# Without arguments, :func:`~mne_learned_mm.make_fsaverage_forward` returns the
# forward model the pretrained model was trained for: the fsaverage template
# with its ``ico3`` source space (1284 sources, orientation fixed normal to the
# cortex) and 90 electrodes of the 10-20 system. It ships with the package, so
# nothing is computed or downloaded.
fwd = make_fsaverage_forward()
print(fwd)

# %%
# A simulated evoked response
# ---------------------------
# One extended patch (3 neighbour rings around a random seed, Gaussian spatial
# profile) with a Gaussian event-related time course, sampled at 512 Hz, and
# white sensor noise at 5 dB SNR — the benchmark protocol of the paper.
snr_db = 5.0
evoked, stc_true = simulate_evoked_extended(fwd, n_patches=1, order=3, snr_db=snr_db,
                                            random_state=32)
evoked.plot(spatial_colors=True, time_unit="ms", titles=dict(eeg="Simulated EEG, 5 dB SNR"))

# %%
# The learned MM estimate
# -----------------------
# :func:`~mne_learned_mm.apply_learned_mm` applies the average reference, runs
# the learned MM iterations and rescales the result to physical units (A·m).
t0 = time.perf_counter()
stc_mm = apply_learned_mm(evoked, fwd)
t_mm = time.perf_counter() - t0
print(f"learned MM: {1e3 * t_mm:.0f} ms, {stc_mm}")

# %%
# sLORETA
# -------
# The noise is white with a known level here, so an ad hoc diagonal noise
# covariance at that level is the right one (SNR in the Frobenius sense, see
# :func:`~mne_learned_mm.simulation.simulate_evoked_extended`). Depth
# weighting needs the free-orientation forward, which the fixed one keeps;
# ``loose=0`` then fixes the orientations again.
noise_std = np.linalg.norm(evoked.data) / np.sqrt(evoked.data.size * (1 + 10 ** (snr_db / 10)))
noise_cov = mne.make_ad_hoc_cov(evoked.info, std=dict(eeg=noise_std))
fwd_free = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False)
t0 = time.perf_counter()
inv = make_inverse_operator(evoked.info, fwd_free, noise_cov, loose=0.0, depth=0.8)
stc_sl = apply_inverse(evoked, inv, lambda2=1.0 / 9.0, method="sLORETA")
t_sl = time.perf_counter() - t0

# %%
# Metrics
# -------
# The metrics need the true seed and patch. With a single patch, the patch is
# the set of active sources and its seed the one of largest amplitude (the
# spatial profile peaks at the seed).
geometry = SourceGeometry.from_forward(fwd)
active = np.abs(stc_true.data).max(axis=1)
patch = np.flatnonzero(active > 0)
seed = patch[np.argmax(active[patch])]
print(f"true patch: {len(patch)} sources around source {seed}")

print(f"{'method':<12}{'LE (mm)':>9}{'AUC (%)':>9}{'nMSE':>8}{'PSNR (dB)':>11}"
      f"{'TE (ms)':>9}{'time (ms)':>11}")
for name, stc, seconds in (("learned MM", stc_mm, t_mm), ("sLORETA", stc_sl, t_sl)):
    m = compute_metrics(stc_true.data, stc.data, [seed], [patch], geometry.pos,
                        geometry.adjacency, evoked.info["sfreq"])
    print(f"{name:<12}{m['LE']:>9.1f}{m['AUC']:>9.1f}{m['nMSE']:>8.3f}{m['PSNR']:>11.1f}"
          f"{m['TE']:>9.1f}{1e3 * seconds:>11.0f}")

# %%
# The three source maps at the peak time
# --------------------------------------
# Each map shows the absolute value, from 25 % to 100 % of its own maximum at
# the peak time of the true source, on the inflated cortex of the hemisphere
# that holds the seed, seen from the side that faces the seed. In an
# interactive session, a plain ``stc.plot()`` opens MNE's 3D viewer; the
# gallery uses the Matplotlib backend, which needs no display.
subjects_dir = fetch_fsaverage_head()
t_peak = stc_true.times[np.argmax(np.abs(stc_true.data[seed]))]
n_lh = len(stc_true.vertices[0])
hemi, vertex = ("lh", stc_true.vertices[0][seed]) if seed < n_lh else \
    ("rh", stc_true.vertices[1][seed - n_lh])


def facing_view(hemi, vertex):
    """The view of MNE's Matplotlib backend that looks at a cortical vertex."""
    rr, _ = nib.freesurfer.read_geometry(subjects_dir / "fsaverage" / "surf" / f"{hemi}.inflated")
    outward = rr[vertex] - rr.mean(axis=0)
    side = -1 if hemi == "lh" else 1
    views = {"lat": (side, 0, 0), "med": (-side, 0, 0), "ros": (0, 1, 0),
             "cau": (0, -1, 0), "dor": (0, 0, 1), "ven": (0, 0, -1)}
    return max(views, key=lambda view: np.dot(views[view], outward))


view = facing_view(hemi, vertex)


def plot_peak(stc, title):
    """Plot |stc| at the true peak time with limits relative to its maximum."""
    stc = abs(stc)
    top = stc.data[:, stc.time_as_index(t_peak)[0]].max()
    fig = stc.plot(subject="fsaverage", subjects_dir=subjects_dir, hemi=hemi, views=view,
                   initial_time=t_peak, time_unit="s", backend="matplotlib", spacing="ico4",
                   colormap="hot", clim=dict(kind="value", lims=[0.25 * top, 0.6 * top, top]),
                   smoothing_steps=5)
    fig.suptitle(f"{title} ({hemi}, {view} view)", color="w")
    return fig


plot_peak(stc_true, "true source")
plot_peak(stc_mm, "learned MM")
plot_peak(stc_sl, "sLORETA")
