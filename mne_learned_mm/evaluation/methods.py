"""Inverse methods compared by the benchmark, behind one pluggable registry.

A method is any callable ``method(evoked, fwd, noise_cov) -> stc``. The
registry :data:`METHODS` maps names to such callables; :func:`make_method`
builds a fresh one with options (e.g. another MxNE ``alpha`` or a model path).

Classical methods go through MNE-Python's public API on ``Evoked`` objects,
exactly as a user would:

- ``"MNE"``, ``"dSPM"``, ``"sLORETA"``, ``"eLORETA"``:
  :func:`mne.minimum_norm.make_inverse_operator` (``loose=0``,
  ``depth=0.8``) and :func:`mne.minimum_norm.apply_inverse`
  (``lambda2=1/9``);
- ``"MxNE"``: :func:`mne.inverse_sparse.mixed_norm` (``alpha=50`` % of
  ``alpha_max``, one MxNE iteration, block coordinate descent so that the
  result does not depend on scikit-learn being installed, ``maxit=3000``,
  ``tol=1e-4``);
- ``"gamma_map"``: :func:`mne.inverse_sparse.gamma_map` (``alpha=1``: the
  noise variance in whitened units, i.e. the true level since the noise
  covariance passed is the true one; ``maxit=1000``, ``tol=1e-5`` instead of
  MNE's 10000 and 1e-6: 40 % faster; on 20 SEREEGA samples the same LE, nMSE
  and PSNR, AUC within 0.02 points and TE within 0.04 ms).

The sparse solvers' convergence warnings ("Did NOT converge", "Convergence
NOT reached", "No active dipoles found") are counted in the callable's
``warnings_`` attribute and logged instead of being raised to the user of
the benchmark; other warnings pass through.

Fixed orientation with depth weighting needs a free-orientation surface
forward (``loose=0`` then fixes it). A fixed forward that keeps its original
free-orientation solution (as read from disk or made by
:func:`mne_learned_mm.head.make_fsaverage_forward`) is converted back once;
a forward computed fixed from the start is used without depth weighting.

The learned solvers, ``"learned_mm"`` and ``"4dvarnet"``, are registered
lazily from :mod:`mne_learned_mm.inverse`; asking for them when that module
or the model is unavailable raises a :class:`RuntimeError` saying why.
"""

import warnings
from collections import Counter

import mne
import numpy as np
from mne.utils import logger

from .._docs import fill_doc

CLASSICAL = ("MNE", "dSPM", "sLORETA", "eLORETA", "MxNE", "gamma_map")
"""Names of the classical methods, all from MNE-Python."""

LEARNED = ("learned_mm", "4dvarnet")
"""Names of the learned methods (need :mod:`mne_learned_mm.inverse` and a model)."""

DEFAULT_MODELS = {
    ("learned_mm", "sereega"): "default",
    ("learned_mm", "nmm"): "fsaverage-ico3-nmm",
    ("4dvarnet", "sereega"): "4dvarnet-fsaverage-ico3-sereega",
    ("4dvarnet", "nmm"): "4dvarnet-fsaverage-ico3-nmm",
}
"""Model used by a learned method for each training set when none is given."""

_NOISE_NORMALIZED = ("dSPM", "sLORETA")
_SOLVER_WARNINGS = ("Did NOT converge", "Convergence NOT reached", "No active dipoles found")


def _run_counting_warnings(counter, func, *args, **kwargs):
    """Call ``func``, counting the solvers' convergence warnings in ``counter``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = func(*args, **kwargs)
    for w in caught:
        message = str(w.message)
        known = [key for key in _SOLVER_WARNINGS if key in message]
        if known:
            counter[known[0]] += 1
            logger.info(f"{func.__name__}: {message.strip()}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _free_forward(fwd):
    """Free-orientation surface forward for ``loose=0, depth=0.8``, or None."""
    if not fwd["surf_ori"] and fwd["source_ori"] != mne.io.constants.FIFF.FIFFV_MNE_FIXED_ORI:
        return mne.convert_forward_solution(fwd, surf_ori=True, verbose=False)
    if fwd["source_ori"] != mne.io.constants.FIFF.FIFFV_MNE_FIXED_ORI:
        return fwd
    if fwd.get("_orig_source_ori") == mne.io.constants.FIFF.FIFFV_MNE_FREE_ORI:
        return mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=False,
                                            verbose=False)
    return None


class _ForwardCache:
    """The forward prepared for MNE's solvers, recomputed when ``fwd`` changes."""

    def __init__(self):
        self._fwd = None

    def __call__(self, fwd):
        if fwd is not self._fwd:
            self._fwd = fwd
            self._free = _free_forward(fwd)
            if self._free is None:
                logger.info("Fixed-orientation forward without its free-orientation "
                            "solution: no depth weighting")
        return (self._free, 0.8) if self._free is not None else (fwd, None)


def _cov_ratio(cov, ref):
    """Scalar ``c`` with ``cov = c * ref``, or None if not proportional."""
    if (ref is None or cov.ch_names != ref.ch_names or cov["diag"] != ref["diag"]
            or list(cov["bads"]) != list(ref["bads"]) or len(cov["projs"]) != len(ref["projs"])):
        return None
    a, b = np.asarray(cov.data, float), np.asarray(ref.data, float)
    if a.shape != b.shape or not np.any(b):
        return None
    c = float(np.vdot(a, b) / np.vdot(b, b))
    if c <= 0 or not np.allclose(a, c * b, rtol=1e-10, atol=0):
        return None
    return c


def _proj_key(info):
    return tuple((p["desc"], bool(p["active"])) for p in info["projs"])


@fill_doc
class MinimumNorm:
    """``"MNE"``, ``"dSPM"``, ``"sLORETA"`` or ``"eLORETA"`` through MNE.

    Parameters
    ----------
    method : str
        Passed to :func:`mne.minimum_norm.apply_inverse`.
    lambda2 : float
        Regularisation (``1 / SNR²``).
    %(depth)s

    Notes
    -----
    The inverse operator is made once and prepared once per method
    (:func:`mne.minimum_norm.prepare_inverse_operator`; eLORETA's weights are
    the slow part) and reused while the forward, channels, projections and
    ``nave`` stay the same and the noise covariance is a positive multiple
    ``c`` of the one it was made with. That reuse is exact: MNE scales the
    source covariance with the whitened gain, so the MNE and eLORETA kernels
    do not depend on ``c`` and the noise-normalised dSPM and sLORETA
    estimates scale as ``1 / sqrt(c)``, which is applied.
    """

    def __init__(self, method, *, lambda2=1.0 / 9.0, depth=0.8):
        self.method = method
        self.lambda2 = lambda2
        self.depth = depth
        self._fwd_cache = _ForwardCache()
        self._key = None
        self._fwd = None
        self._cov = None
        self._inv = None

    def __call__(self, evoked, fwd, noise_cov):
        """Estimate sources; see :func:`mne.minimum_norm.apply_inverse`."""
        from mne.minimum_norm import (
            apply_inverse,
            make_inverse_operator,
            prepare_inverse_operator,
        )

        free, depth = self._fwd_cache(fwd)
        depth = None if depth is None else self.depth
        key = (tuple(evoked.ch_names), _proj_key(evoked.info), evoked.nave)
        same = free is self._fwd and key == self._key
        ratio = _cov_ratio(noise_cov, self._cov) if same else None
        if ratio is None:
            inv = make_inverse_operator(evoked.info, free, noise_cov, loose=0.0, depth=depth,
                                        verbose=False)
            self._inv = prepare_inverse_operator(inv, evoked.nave, self.lambda2, self.method,
                                                 verbose=False)
            self._fwd, self._key, self._cov, ratio = free, key, noise_cov, 1.0
        stc = apply_inverse(evoked, self._inv, self.lambda2, method=self.method,
                            prepared=True, verbose=False)
        if self.method in _NOISE_NORMALIZED and ratio != 1.0:
            stc.data /= np.sqrt(ratio)
        return stc

    def __repr__(self):
        return f"MinimumNorm({self.method!r}, lambda2={self.lambda2:g}, depth={self.depth})"


class _SparseSolver:
    """MNE sparse solver with ``loose=0``, cached forward and warnings counted.

    The part MixedNorm and GammaMap share; depth weighting applies when the
    forward allows it (see :class:`_ForwardCache`).
    """

    def __init__(self, depth):
        self.depth = depth
        self._fwd_cache = _ForwardCache()
        self.warnings_ = Counter()

    def _solve(self, func, evoked, fwd, noise_cov, **options):
        free, depth = self._fwd_cache(fwd)
        return _run_counting_warnings(
            self.warnings_, func, evoked, free, noise_cov, loose=0.0,
            depth=None if depth is None else self.depth, verbose=False, **options)


@fill_doc
class MixedNorm(_SparseSolver):
    """``"MxNE"``: :func:`mne.inverse_sparse.mixed_norm` with fixed orientation.

    Parameters
    ----------
    alpha : float
        Regularisation in % of ``alpha_max`` (0-100).
    n_mxne_iter : int
        1 for MxNE, more for iterative reweighting (irMxNE).
    maxit : int
        Maximum number of solver iterations.
    tol : float
        Tolerance on the duality gap.
    solver : "bcd" | "cd" | "auto"
        MxNE solver (``"cd"`` needs scikit-learn).
    %(depth)s

    Attributes
    ----------
    %(warnings_)s
    """

    def __init__(self, *, alpha=50.0, n_mxne_iter=1, maxit=3000, tol=1e-4, solver="bcd",
                 depth=0.8):
        super().__init__(depth)
        self.alpha = alpha
        self.n_mxne_iter = n_mxne_iter
        self.maxit = maxit
        self.tol = tol
        self.solver = solver

    def __call__(self, evoked, fwd, noise_cov):
        """Estimate sources; see :func:`mne.inverse_sparse.mixed_norm`."""
        from mne.inverse_sparse import mixed_norm

        return self._solve(mixed_norm, evoked, fwd, noise_cov, alpha=self.alpha,
                           maxit=self.maxit, tol=self.tol, n_mxne_iter=self.n_mxne_iter,
                           solver=self.solver)

    def __repr__(self):
        return (f"MixedNorm(alpha={self.alpha:g}, n_mxne_iter={self.n_mxne_iter}, "
                f"maxit={self.maxit}, tol={self.tol:g}, solver={self.solver!r})")


@fill_doc
class GammaMap(_SparseSolver):
    """``"gamma_map"``: :func:`mne.inverse_sparse.gamma_map` with fixed orientation.

    Parameters
    ----------
    alpha : float
        Noise variance in whitened units (1: the noise covariance is exact).
    maxit : int
        Maximum number of iterations.
    tol : float
        Tolerance on the relative change of the hyperparameters.
    %(depth)s

    Attributes
    ----------
    %(warnings_)s
    """

    def __init__(self, *, alpha=1.0, maxit=1000, tol=1e-5, depth=0.8):
        super().__init__(depth)
        self.alpha = alpha
        self.maxit = maxit
        self.tol = tol

    def __call__(self, evoked, fwd, noise_cov):
        """Estimate sources; see :func:`mne.inverse_sparse.gamma_map`."""
        from mne.inverse_sparse import gamma_map

        return self._solve(gamma_map, evoked, fwd, noise_cov, alpha=self.alpha,
                           maxit=self.maxit, tol=self.tol)

    def __repr__(self):
        return f"GammaMap(alpha={self.alpha:g}, maxit={self.maxit}, tol={self.tol:g})"


class LearnedSolver:
    """A trained solver of this package (learned MM or 4DVarNet).

    Parameters
    ----------
    model : str | path-like
        Model name or directory (see :func:`mne_learned_mm.pretrained.load_model`).
    n_iter : int | None
        Number of solver iterations; ``None`` uses the model's.
    device : str
        Where to solve.

    Notes
    -----
    The estimator is fitted once per forward. No noise covariance is passed:
    the models are trained on average-referenced, unwhitened data with white
    sensor noise, and their cosine costs ignore the scale of the data.
    """

    def __init__(self, model="default", *, n_iter=None, device="cpu"):
        self.model = model
        self.n_iter = n_iter
        self.device = device
        self._fwd = None

    def __call__(self, evoked, fwd, noise_cov):
        """Estimate sources with :class:`mne_learned_mm.inverse.LearnedMMInverse`."""
        if fwd is not self._fwd:
            inverse = _import_inverse()
            self._inv = inverse.LearnedMMInverse(self.model, n_iter=self.n_iter,
                                                 device=self.device, verbose=False)
            self._inv.fit(fwd, verbose=False)
            self._fwd = fwd
        return self._inv.apply(evoked, verbose=False)

    def __repr__(self):
        return f"LearnedSolver(model={str(self.model)!r}, n_iter={self.n_iter})"


def _import_inverse():
    try:
        from .. import inverse
    except ImportError as exc:
        raise RuntimeError(
            f"The learned solvers need mne_learned_mm.inverse, which cannot be imported "
            f"({type(exc).__name__}: {exc}).") from None
    return inverse


FACTORIES = {
    "MNE": lambda **kw: MinimumNorm("MNE", **kw),
    "dSPM": lambda **kw: MinimumNorm("dSPM", **kw),
    "sLORETA": lambda **kw: MinimumNorm("sLORETA", **kw),
    "eLORETA": lambda **kw: MinimumNorm("eLORETA", **kw),
    "MxNE": MixedNorm,
    "gamma_map": GammaMap,
}
"""Name → constructor of a fresh method callable taking options as keywords."""

METHODS = {name: factory() for name, factory in FACTORIES.items()}
"""Name → ``callable(evoked, fwd, noise_cov) -> stc`` (learned ones added lazily)."""


def default_model(name, train_data="sereega"):
    """Model a learned method uses when none is given.

    Parameters
    ----------
    name : "learned_mm" | "4dvarnet"
        Method.
    train_data : "sereega" | "nmm"
        Kind of data the model was trained on.

    Returns
    -------
    model : str
        Model name, see :data:`DEFAULT_MODELS`.
    """
    if (name, train_data) not in DEFAULT_MODELS:
        raise ValueError(f"No default model for {name!r} trained on {train_data!r}; "
                         f"known: {sorted(DEFAULT_MODELS)}")
    return DEFAULT_MODELS[(name, train_data)]


def _learned_factory(name):
    def factory(model=None, train_data="sereega", n_iter=None, device="cpu"):
        model = default_model(name, train_data) if model is None else model
        _check_model(name, model)
        return LearnedSolver(model, n_iter=n_iter, device=device)

    return factory


def _check_model(name, model):
    _import_inverse()
    from .. import pretrained

    try:
        _, config = pretrained.load_state(model)
    except Exception as exc:
        raise RuntimeError(
            f"Method {name!r} needs a trained model; {str(model)!r} cannot be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Packaged models: {pretrained.list_models()}. Pass a model directory "
            f"(benchmark CLI: --model {name}=PATH).") from None
    kind = config.get("kind")
    expected = "mm" if name == "learned_mm" else "4dvarnet"
    if kind != expected:
        raise RuntimeError(f"Method {name!r} expects a {expected!r} model, but "
                           f"{str(model)!r} is a {kind!r} model.")


def register_method(name, method, *, factory=None, overwrite=False):
    """Add a method to the registry.

    Parameters
    ----------
    name : str
        Method name.
    method : callable
        ``method(evoked, fwd, noise_cov) -> mne.SourceEstimate``.
    factory : callable | None
        ``factory(**options) -> method`` used by :func:`make_method` with
        options; ``None`` means the method takes no options.
    overwrite : bool
        Replace an existing method of that name.
    """
    if not callable(method):
        raise TypeError(f"method must be callable, got {type(method).__name__}")
    if name in METHODS and not overwrite:
        raise ValueError(f"Method {name!r} is already registered (use overwrite=True)")
    METHODS[name] = method
    if factory is not None:
        FACTORIES[name] = factory
    else:
        FACTORIES.pop(name, None)


def available_methods():
    """Names of the registered methods plus the learned ones.

    Returns
    -------
    names : list of str
    """
    return list(METHODS) + [name for name in LEARNED if name not in METHODS]


def make_method(name, **options):
    """A fresh method callable (own caches) with options.

    Parameters
    ----------
    name : str
        A name from :func:`available_methods`.
    **options
        Keyword arguments of the method's constructor, e.g. ``alpha`` for
        ``"MxNE"`` or ``model`` and ``train_data`` for ``"learned_mm"``.

    Returns
    -------
    method : callable
        ``method(evoked, fwd, noise_cov) -> mne.SourceEstimate``.
    """
    if name in LEARNED and name not in METHODS:
        return _learned_factory(name)(**options)
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {available_methods()}")
    if name in FACTORIES:
        return FACTORIES[name](**options)
    if options:
        raise ValueError(f"Method {name!r} takes no options, got {sorted(options)}")
    return METHODS[name]


def get_method(name):
    """The registered callable of a method (registering a learned one if needed).

    Parameters
    ----------
    name : str
        A name from :func:`available_methods`.

    Returns
    -------
    method : callable
        ``method(evoked, fwd, noise_cov) -> mne.SourceEstimate``.
    """
    if name in LEARNED and name not in METHODS:
        register_method(name, _learned_factory(name)(), factory=_learned_factory(name))
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {available_methods()}")
    return METHODS[name]


def stc_to_array(stc, fwd):
    """Source estimate as a dense array in the forward's source order.

    Parameters
    ----------
    stc : mne.SourceEstimate
        Estimate on (a subset of) the forward's vertices, fixed orientation.
    fwd : mne.Forward
        Forward whose ``src`` defines the source order.

    Returns
    -------
    X_hat : array, shape (n_sources, n_times)
        Zero on the vertices absent from ``stc`` (sparse solvers).
    """
    vertno = [np.asarray(s["vertno"]) for s in fwd["src"]]
    offsets = np.cumsum([0] + [len(v) for v in vertno])
    X_hat = np.zeros((offsets[-1], stc.data.shape[1]))
    row = 0
    for hemi, verts in enumerate(stc.vertices):
        idx = np.searchsorted(vertno[hemi], verts)
        if np.any(idx >= len(vertno[hemi])) or np.any(vertno[hemi][idx] != verts):
            raise ValueError("stc has vertices that are not in the forward's source space")
        X_hat[offsets[hemi] + idx] = stc.data[row:row + len(verts)]
        row += len(verts)
    return X_hat
