"""Simulated EEG for training and evaluation.

Extended cortical patches on any fixed-orientation surface forward, with
SEREEGA-style Gaussian ERPs, Jansen-Rit epileptiform spikes or evoked-like
components, sensor noise at a target SNR, on-the-fly torch datasets, and a
patch bank of single topographies for training the amortized start.
"""

from .bank import BankConfig, PatchBank
from .dataset import (
    KINDS,
    SavedSimulations,
    SimulatedDataset,
    collate,
    default_config,
    default_noise,
    load_simulations,
    save_simulations,
    split_indices,
    worker_init_fn,
)
from .evoked import simulate_evoked_extended
from .geometry import SourceGeometry, gaussian_profile, source_adjacency
from .leadfield import average_reference, make_leadfield
from .nmm import NMMConfig, detect_spikes, jansen_rit, load_spike_bank, make_spike_bank
from .noise import (
    NoiseConfig,
    apply_channel_mask,
    brain_background,
    power_law_noise,
    scale_to_snr,
    snr_db,
)
from .sources import draw_patches, simulate_sample
from .waveforms import EvokedConfig, PatchConfig, SereegaConfig, gaussian_erp

__all__ = [
    "KINDS",
    "BankConfig",
    "EvokedConfig",
    "NMMConfig",
    "NoiseConfig",
    "PatchBank",
    "PatchConfig",
    "SavedSimulations",
    "SereegaConfig",
    "SimulatedDataset",
    "SourceGeometry",
    "apply_channel_mask",
    "average_reference",
    "brain_background",
    "collate",
    "default_config",
    "default_noise",
    "detect_spikes",
    "draw_patches",
    "gaussian_erp",
    "gaussian_profile",
    "jansen_rit",
    "load_simulations",
    "load_spike_bank",
    "make_leadfield",
    "make_spike_bank",
    "power_law_noise",
    "save_simulations",
    "scale_to_snr",
    "simulate_evoked_extended",
    "simulate_sample",
    "snr_db",
    "source_adjacency",
    "split_indices",
    "worker_init_fn",
]
