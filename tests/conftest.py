"""Shared fixtures: small, fast forward models on the embedded fsaverage head."""

import mne
import pytest
import torch

from mne_learned_mm.head import default_info, fetch_fsaverage_head, make_fsaverage_forward

torch.set_num_threads(2)


def pytest_configure(config):
    # Warnings are errors; each exception below is narrow and explained.
    for line in (
        "error::",
        # matplotlib/pyvista may warn about the non-GUI Agg backend in CI
        "ignore:FigureCanvasAgg is non-interactive:UserWarning",
        # torch's DataLoader warns when workers outnumber the 2 cores here
        "ignore:This DataLoader will create:UserWarning",
    ):
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture
def one_thread():
    """Torch on one thread during a test (tiny problems; threads only add contention).

    Used by the solver tests through ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="session")
def subjects_dir():
    """Subjects dir with the embedded fsaverage (unpacked once)."""
    return fetch_fsaverage_head(source="embedded")


@pytest.fixture(scope="session")
def fwd_default():
    """The packaged default forward: 90 EEG channels x 1284 fixed sources (ico3)."""
    return make_fsaverage_forward()


@pytest.fixture(scope="session")
def fwd_small(subjects_dir):
    """A small fixed-orientation forward: default montage, ico2 (324 sources).

    A spherical head fitted to the electrodes keeps it fast (no BEM solve).
    """
    info = default_info()
    src = mne.setup_source_space("fsaverage", spacing="ico2", subjects_dir=subjects_dir,
                                 add_dist=False, verbose=False)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    fwd = mne.make_forward_solution(info, trans="fsaverage", src=src, bem=sphere,
                                    meg=False, eeg=True, mindist=0.0, verbose=False)
    return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                        use_cps=True, verbose=False)
