"""Evaluation: the paper's metrics and a benchmark of inverse methods.

Metrics (LE, AUC, nMSE, PSNR, TE) follow DESIGN §6;
``python -m mne_learned_mm.evaluation.benchmark --help`` runs the benchmark.
"""

from .methods import (
    CLASSICAL,
    LEARNED,
    METHODS,
    available_methods,
    get_method,
    make_method,
    register_method,
    stc_to_array,
)
from .metrics import (
    METRICS,
    auc_at_peak,
    compute_metrics,
    localization_error,
    neighbour_rings,
    nmse_at_peak,
    patch_localization_error,
    psnr,
    roc_auc,
    seed_zone,
    summarize_metrics,
    time_error,
)

# The benchmark module is imported lazily so that ``python -m`` can run it as
# ``__main__`` without a second copy in ``sys.modules``.
_BENCHMARK = ("noise_variance", "plot_results", "run_benchmark", "sample_evoked",
              "select_channels", "white_noise_cov")

__all__ = [
    "CLASSICAL",
    "LEARNED",
    "METHODS",
    "METRICS",
    "auc_at_peak",
    "available_methods",
    "compute_metrics",
    "get_method",
    "localization_error",
    "make_method",
    "neighbour_rings",
    "nmse_at_peak",
    "noise_variance",
    "patch_localization_error",
    "plot_results",
    "psnr",
    "register_method",
    "roc_auc",
    "run_benchmark",
    "sample_evoked",
    "seed_zone",
    "select_channels",
    "stc_to_array",
    "summarize_metrics",
    "time_error",
    "white_noise_cov",
]


def __getattr__(name):
    if name in _BENCHMARK:
        from . import benchmark

        return getattr(benchmark, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
