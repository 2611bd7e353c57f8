"""Where the package keeps its on-disk cache."""

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
