"""Sphinx configuration of the mne-learned-mm documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W -b html doc doc/_build/html
    python doc/check_images.py

Environment variables:

``MNE_LMM_DOC_INTERSPHINX=1``
    Link to the MNE, PyTorch, NumPy, SciPy, Matplotlib and Python docs. It
    needs internet to fetch their inventories, so it is off by default (the
    build then works offline; references to those projects stay plain text).
``MNE_LMM_DOC_EXAMPLES=<regex>``
    Only execute the gallery examples whose path matches the regex (default:
    all of them). Examples not executed are still rendered, without output.
"""

import os
import re
import shutil
import sys
from datetime import date
from pathlib import Path

import matplotlib
from docutils import nodes

matplotlib.use("Agg")

import mne_learned_mm  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# -- project ---------------------------------------------------------------------
project = "mne-learned-mm"
author = "mne-learned-mm developers"
copyright = f"{date.today().year}, {author}"
release = mne_learned_mm.__version__
version = ".".join(release.split(".")[:2])

# -- general -------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",  # benchmarks/RESULTS.md, included by benchmarks.rst
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
root_doc = "index"
default_role = "literal"
pygments_style = "sphinx"
# benchmarks/RESULTS.md starts at "##": its sections go below the title of benchmarks.rst
suppress_warnings = ["myst.header"]

# -- autodoc / autosummary / numpydoc ------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
numpydoc_xref_aliases = {
    "Evoked": "mne.Evoked",
    "Epochs": "mne.Epochs",
    "Forward": "mne.Forward",
    "Info": "mne.Info",
    "Covariance": "mne.Covariance",
    "SourceEstimate": "mne.SourceEstimate",
    "Tensor": "torch.Tensor",
    "Generator": "numpy.random.Generator",
    "RandomState": "numpy.random.RandomState",
    "Path": "pathlib.Path",
    "LearnedMMInverse": "mne_learned_mm.LearnedMMInverse",
    "TrainConfig": "mne_learned_mm.training.TrainConfig",
    "SimulatedDataset": "mne_learned_mm.simulation.SimulatedDataset",
}
numpydoc_xref_ignore = {
    "type", "optional", "default", "of", "or", "shape", "array", "array-like",
    "path-like", "dict", "list", "tuple", "int", "float", "str", "bool", "None",
    "n_sources", "n_times", "n_sensors", "n_channels", "n_batch", "n_patches",
    "n_iter", "k", "function", "instance", "callable", "like", "the", "same", "as",
}

# -- intersphinx (opt-in: needs internet) ---------------------------------------------
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "mne": ("https://mne.tools/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
}
if os.environ.get("MNE_LMM_DOC_INTERSPHINX", "0").lower() in ("1", "true", "yes"):
    intersphinx_mapping = _INTERSPHINX
else:
    intersphinx_mapping = {}
intersphinx_timeout = 10

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"mne-learned-mm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc", "sg_download_links", "sg_launcher_links"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"install": [], "how_it_works": [], "benchmarks": []}
html_show_sourcelink = False
html_last_updated_fmt = None


# -- sphinx-gallery -------------------------------------------------------------------
def _examples_pattern():
    custom = os.environ.get("MNE_LMM_DOC_EXAMPLES")
    return custom if custom else re.escape(os.sep) + r"\d\d_"


sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": _examples_pattern(),
    "ignore_pattern": r"__init__\.py|/_",
    "within_subsection_order": "FileNameSortKey",
    "backreferences_dir": "generated/backreferences",
    "doc_module": ("mne_learned_mm",),
    "reference_url": {"mne_learned_mm": None},
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib", "gallery_utils.reset_warnings"),
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "show_signature": False,
    "capture_repr": (),
    "matplotlib_animations": False,
}


# -- the embedded head for the gallery's plots -------------------------------------------
def _fsaverage_sphere_reg():
    """Give the embedded fsaverage the ``?h.sphere.reg`` MNE's mpl 3D plot reads.

    ``stc.plot(backend="matplotlib")`` reads the triangles of
    ``surf/?h.sphere.reg``. For fsaverage the registered sphere is the sphere
    itself (same mesh), so a copy of ``?h.sphere`` is exact. No-op once the
    embedded head ships the file.
    """
    surf = Path(mne_learned_mm.fetch_fsaverage_head(verbose=False)) / "fsaverage" / "surf"
    for hemi in ("lh", "rh"):
        reg = surf / f"{hemi}.sphere.reg"
        if not reg.is_file() and (surf / f"{hemi}.sphere").is_file():
            shutil.copyfile(surf / f"{hemi}.sphere", reg)


# labels of other projects' docs used by docstrings we include (MNE's ``verbose``)
_EXTERNAL_LABELS = {"tut-logging", "python:bltin-boolean-values"}


def _offline_reference(app, env, node, contnode):
    """Without intersphinx, render references to other projects as plain text.

    Only for targets that belong to another project (an intersphinx prefix or
    a known label of MNE's docs); our own broken references still warn.
    """
    if intersphinx_mapping:
        return None
    target = node.get("reftarget", "")
    prefix = target.split(":", 1)[0] if ":" in target else ""
    if target not in _EXTERNAL_LABELS and prefix not in _INTERSPHINX:
        return None
    text = contnode.astext()
    if prefix and text.startswith(prefix + ":"):  # "python:str" -> "str"
        text = text[len(prefix) + 1:]
        return nodes.literal(text, text) if isinstance(contnode, nodes.literal) \
            else nodes.Text(text)
    return contnode


def _fill_mne_docdict(app, what, name, obj, options, lines):
    """Fill ``%(verbose)s``-style MNE docdict entries left in class docstrings."""
    from mne.utils.docs import docdict

    for k, line in enumerate(lines):
        for key in re.findall(r"%\((\w+)\)s", line):
            if key in docdict:
                indent = line[:len(line) - len(line.lstrip())]
                filled = docdict[key].strip("\n").split("\n")
                lines[k] = "\n".join(indent + f if f.strip() else "" for f in filled)
    # split the joined entries back into lines (Sphinx expects one per item)
    lines[:] = "\n".join(lines).split("\n")


def setup(app):
    app.connect("missing-reference", _offline_reference)
    app.connect("autodoc-process-docstring", _fill_mne_docdict, priority=400)


_fsaverage_sphere_reg()
