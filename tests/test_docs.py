"""The shared docstring entries (``mne_learned_mm._docs``)."""

import importlib
import inspect
import re

import pytest

from mne_learned_mm._docs import docdict, fill_doc


def test_fill_doc_indents_and_leaves_unknown_names():
    def f():
        """Summary.

        Parameters
        ----------
        %(margin)s
        %(verbose)s
        """

    fill_doc(f)
    assert "        margin : int\n            A later seed" in f.__doc__
    assert "%(verbose)s" in f.__doc__  # MNE's entry, left for MNE


@pytest.mark.parametrize("module", [
    "mne_learned_mm.evaluation.metrics", "mne_learned_mm.evaluation.methods",
    "mne_learned_mm.simulation.bank", "mne_learned_mm.simulation.waveforms",
    "mne_learned_mm.solver.prior", "mne_learned_mm.solver.start"])
def test_no_entry_left_unfilled(module):
    mod = importlib.import_module(module)
    docs = [obj.__doc__ or "" for _, obj in inspect.getmembers(mod)
            if inspect.isfunction(obj) or inspect.isclass(obj)]
    docs += [m.__doc__ or "" for _, cls in inspect.getmembers(mod, inspect.isclass)
             for _, m in inspect.getmembers(cls, inspect.isfunction)]
    left = {name for doc in docs for name in re.findall(r"%\((\w+)\)s", doc)}
    assert not left & set(docdict)
