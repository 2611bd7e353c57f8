"""Where the package keeps its on-disk cache."""

import operator
import os
from pathlib import Path

import mne

CONFIG_KEY = "MNE_LEARNED_MM_DATA"


def get_data_dir(subdir=None):
    """Return (and create) the package's cache directory.

    The location is the config key ``MNE_LEARNED_MM_DATA`` (environment
    variable or MNE config file), falling back to
    ``<MNE data dir>/mne_learned_mm``.

    Parameters
    ----------
    subdir : str | None
        Optional sub-directory.

    Returns
    -------
    path : pathlib.Path
        The directory (it exists on return).
    """
    path = mne.get_config(CONFIG_KEY, None, use_env=True)
    if path is None:
        mne_data = mne.get_config("MNE_DATA", None) or os.path.join(
            os.path.expanduser("~"), "mne_data"
        )
        path = os.path.join(mne_data, "mne_learned_mm")
    path = Path(path)
    if subdir is not None:
        path = path / subdir
    path.mkdir(parents=True, exist_ok=True)
    return path


def _available_devices():
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + [f"cuda:{k}" for k in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device, *, rank=None):
    """Validate a device name and return the :class:`torch.device`.

    Parameters
    ----------
    device : "auto" | "cpu" | "cuda" | "cuda:<index>" | "mps" | torch.device
        ``"auto"`` picks a CUDA GPU when one is usable, else the CPU.
    rank : int | None
        Rank of this process in distributed training: a CUDA device without
        an index, with several GPUs visible, becomes ``cuda:<LOCAL_RANK>``
        (the environment variable set by torchrun, else ``rank``). ``None``
        (one process) leaves it as it is.

    Returns
    -------
    device : torch.device
    """
    import torch

    available = _available_devices()
    if isinstance(device, str) and device == "auto":
        device = "cuda" if "cuda" in available else "cpu"  # usable: the checks pass
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f'device must be "auto", "cpu", "cuda", "cuda:<index>" or a torch.device, '
            f"got {device!r}. Available on this machine: {', '.join(available)}."
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"this torch build ({torch.__version__}) has no CUDA support"
                     if torch.version.cuda is None else "no CUDA GPU is visible")
            raise ValueError(
                f"device={device!r} was requested but {build}. Available on this "
                f"machine: {', '.join(available)}. Use device=\"cpu\" (or \"auto\"), or "
                "install the CUDA build of torch on a GPU machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) "
                f"are visible. Available: {', '.join(available)}.")
        if rank is not None and dev.index is None and torch.cuda.device_count() > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    elif dev.type not in ("cpu", "cuda") and str(dev) not in available:
        raise ValueError(
            f"device={device!r} is not available. Available on this machine: "
            f"{', '.join(available)}.")
    return dev


def check_n_jobs(n_jobs):
    """Number of CPU threads for ``n_jobs`` in MNE's convention.

    Parameters
    ----------
    n_jobs : int | None
        ``None`` means 1 (MNE's default; ``MNE_N_JOBS`` in the MNE config
        overrides it), ``-1`` all CPU cores, ``-k`` all but ``k - 1``.

    Returns
    -------
    n_threads : int
        At least 1.
    """
    if n_jobs is None:
        n_jobs = mne.get_config("MNE_N_JOBS", 1, use_env=True)
    try:
        n_jobs = operator.index(int(n_jobs) if isinstance(n_jobs, str) else n_jobs)
    except (TypeError, ValueError):
        raise ValueError(f"n_jobs must be an int or None, got {n_jobs!r}") from None
    n_cpu = os.cpu_count() or 1
    if n_jobs == 0:
        raise ValueError("n_jobs must not be 0: use None or 1 for one thread, -1 for all cores")
    if n_jobs < 0:
        n_jobs = max(n_cpu + 1 + n_jobs, 1)
    return int(n_jobs)
