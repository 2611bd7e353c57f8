"""MNE objects in and out: :class:`LearnedMMInverse` and :func:`apply_learned_mm`.

Flow: ``Evoked/Epochs + Forward`` → channel matching, average reference,
optional whitening → arrays ``Y (B, n, t)``, ``L (n, s)`` → the learned MM
solver (``mne_learned_mm.solver``) → least-squares amplitude scaling →
:class:`mne.SourceEstimate` in A·m.
"""

import contextlib
import copy
import inspect
import json
import operator
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mne
import numpy as np
import torch
from mne.cov import compute_whitener, prepare_noise_cov
from mne.proj import make_eeg_average_ref_proj, make_projector
from mne.utils import fill_doc, logger, verbose, warn

from ._config import check_device, check_n_jobs
from ._forward import fixed_surface_forward
from .pretrained import DEFAULT_MODEL, check_precision, load_model, source_patches
from .solver.init import fitted_scale

_SFREQ_TOL = 0.05  # relative sampling-rate mismatch tolerated without resampling
#: Fewest good EEG channels accepted: the average reference leaves n - 1 dimensions and
#: the cosine data term needs at least two of them.
MIN_CHANNELS = 3
#: Below this many channels a warning says that localization degrades (the shipped
#: model is measured on 32 to 128 channels, benchmarks/RESULTS.md).
FEW_CHANNELS = 16
_BOUNDS = ("analytic", "hvp", "min", "none", "scaled")
#: Parameters that :meth:`LearnedMMInverse.fit` uses; changing one needs a new fit.
_FIT_PARAMS = ("model", "n_iter", "bound", "device", "precision")


@fill_doc
class LearnedMMInverse:
    """Learned Majorization-Minimization EEG inverse solver.

    Follows scikit-learn's estimator rules: parameters are stored as given,
    :meth:`fit` prepares the gain matrix and sets the attributes ending in
    ``_``, :meth:`apply` solves.

    Parameters
    ----------
    model : str | path-like
        A packaged model name (``"default"``: fsaverage ico3, trained on the
        90-channel 10-20 montage and its subsets, patch-bank topographies)
        or a model directory written by the training CLIs.
    n_iter : int | None
        Number of MM iterations (``0``: the learned start alone); ``None`` uses the
        model's trained value.
    bound : "analytic" | "hvp" | "min" | "none" | "scaled" | None
        Curvature bound of the MM steps (see
        :class:`~mne_learned_mm.solver.mm.MMConfig`); ``None`` uses the model's.
    device : "auto" | "cpu" | "cuda" | "cuda:<index>" | torch.device
        Where to solve. ``"auto"`` uses a GPU when available.
    precision : "auto" | "float32" | "float16"
        Storage of the start network's weights. ``"float16"`` (CPU only)
        keeps them in float16 in float32 arithmetic
        (:func:`mne_learned_mm.solver.start.half_weight_network`): the same
        sources to ~1e-6, faster on CPU. ``"auto"``: ``"float16"`` on CPU,
        ``"float32"`` on GPU.
    batch_size : int
        Number of epochs solved at once.
    n_jobs : int | None
        Number of CPU threads used during :meth:`apply` (MNE's convention:
        ``None`` is 1 unless ``MNE_N_JOBS`` is set, ``-1`` all cores). On the
        CPU, the epochs are shared among ``n_jobs`` workers, a batch at a
        time, each with one torch thread: the start's products are too small
        for several threads to pay within a batch, so an Evoked is solved on
        one. With MM steps a worker gets ``n_jobs`` divided by the workers.
    %(verbose)s

    Attributes
    ----------
    config_ : dict
        The model's configuration (source space, sampling rate, training).
    fwd_ : mne.Forward
        The forward restricted to the model's sources, fixed orientation.
    noise_cov_ : mne.Covariance | None
        The noise covariance given to :meth:`fit`.
    history_ : dict
        Of the last solve: ``cost`` (n_batch, n_iter + 1) lower-level cost per
        iteration, ``n_shrinks`` and ``rejected`` (n_batch, n_iter) from the
        descent certificate, ``frac_hi``/``frac_lo`` (fraction of p clipped at
        the bounds) and ``nu_hi`` (the upper bound used).

    Notes
    -----
    As :func:`mne.minimum_norm.apply_inverse`, the solver applies all
    projectors in ``info["projs"]`` of the data (active or not) to data and
    gain, together with the average reference, and whitens both with the
    noise covariance when one is given (:func:`mne.cov.compute_whitener`,
    rank estimated after projection).

    At least ``MIN_CHANNELS`` (3) good EEG channels are needed; below 16 a
    warning says that localization degrades (the shipped model is measured
    on 32 to 128 channels).

    The shipped model estimates from an amortized start (a network trained
    on extended patches and single sources, see :doc:`/how_it_works`); its
    default is that start alone, ``n_iter=10`` adds ten MM steps with the
    descent certificate. Where one source explains a component of the data
    better than the network's pattern, the start takes that source (a dipole
    scan): a single dipole is found exactly. Where as many single sources as
    the data have components (RAP-MUSIC) explain a window better, the start
    takes them: two or three simultaneous dipoles are found closer than by
    sLORETA (2.5 mm against 4.8 mm over 1-3 dipoles, ``benchmarks/RESULTS.md``).
    The same choice among patches of the profiles of the model's training
    bank, grown by 0 to 7 neighbour rings (built by :meth:`fit` from the
    forward's source space), takes the patches where they explain 99.5 %% of
    the window besides what its noise level lets no model explain: the patches
    of the simulated test sets are then found with their true profile.
    """

    def __init__(self, model=DEFAULT_MODEL, *, n_iter=None, bound=None, device="auto",
                 precision="auto", batch_size=64, n_jobs=None, verbose=None):
        self.model = model
        self.n_iter = n_iter
        self.bound = bound
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.verbose = verbose

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                           if k != "verbose")
        if not hasattr(self, "fwd_"):
            state = "not fitted"
        else:
            state = (f"fitted: {self.fwd_['nchan']} EEG channels × {self.fwd_['nsource']} "
                     f"sources, noise_cov={'yes' if self.noise_cov_ is not None else 'no'}, "
                     f"device={str(self.device_)!r}")
        return f"<LearnedMMInverse | {params} | {state}>"

    # -- scikit-learn style parameters -------------------------------------
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        """Get the estimator's parameters.

        Returns
        -------
        params : dict
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set the estimator's parameters.

        Changing a parameter that :meth:`fit` uses (``model``, ``n_iter``,
        ``bound``, ``device``) on a fitted estimator makes
        :meth:`apply` refuse until :meth:`fit` is called again;
        ``batch_size``, ``n_jobs`` and ``verbose`` take effect at once.

        Returns
        -------
        self : LearnedMMInverse
        """
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"Invalid parameter {key!r}; valid: {valid}")
            setattr(self, key, value)
        return self

    def save(self, fname, *, overwrite=False):
        """Save the estimator: parameters (JSON) and, if fitted, its state.

        A fitted estimator also writes its forward (``<fname>-fwd.fif``,
        the model's sources in fixed orientation) and its noise covariance
        (``<fname>-cov.fif``) beside the JSON file; :meth:`load` fits again
        from them.

        Parameters
        ----------
        fname : path-like
            Output file, conventionally ending in ``-lmm.json``.
        overwrite : bool
            Replace existing files.
        """
        fname = Path(fname)
        stem = fname.name[:-5] if fname.name.endswith(".json") else fname.name
        files = {"fwd": f"{stem}-fwd.fif", "noise_cov": f"{stem}-cov.fif"}
        fitted = hasattr(self, "fwd_")
        targets = [fname]
        if fitted:
            targets.append(fname.parent / files["fwd"])
            if self.noise_cov_ is not None:
                targets.append(fname.parent / files["noise_cov"])
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f'Destination file exists. Please use option "overwrite=True" to force '
                f"overwriting of: {', '.join(existing)}")
        params = {k: (v if isinstance(v, (bool, int, float, type(None))) else str(v))
                  for k, v in self.get_params().items()}
        content = {"LearnedMMInverse": params}
        if fitted:
            with warnings.catch_warnings():
                # MNE writes the free-orientation original and says so; load() fits
                # (converts to fixed orientation) again
                warnings.filterwarnings("ignore", "This forward solution is based on",
                                        RuntimeWarning)
                mne.write_forward_solution(targets[1], self.fwd_, overwrite=True,
                                           verbose=False)
            state = {"fwd": files["fwd"], "noise_cov": None}
            if self.noise_cov_ is not None:
                self.noise_cov_.save(targets[2], overwrite=True, verbose=False)
                state["noise_cov"] = files["noise_cov"]
            content["fitted"] = state
        with open(fname, "w") as fid:
            json.dump(content, fid, indent=2)

    @classmethod
    def load(cls, fname):
        """Load an estimator saved with :meth:`save` (fitted again if it was).

        Returns
        -------
        inv : LearnedMMInverse
        """
        fname = Path(fname)
        with open(fname) as fid:
            content = json.load(fid)
        if "LearnedMMInverse" not in content:
            raise ValueError(f"{fname} is not a LearnedMMInverse file")
        inv = cls(**content["LearnedMMInverse"])
        state = content.get("fitted")
        if state:
            fwd = mne.read_forward_solution(fname.parent / state["fwd"], verbose=False)
            cov = (mne.read_cov(fname.parent / state["noise_cov"], verbose=False)
                   if state.get("noise_cov") else None)
            inv.fit(fwd, cov, verbose=False)
        return inv

    # -- fit ---------------------------------------------------------------
    @verbose
    def fit(self, fwd, noise_cov=None, *, verbose=None):
        """Prepare the gain matrix and check the model's compatibility.

        Parameters
        ----------
        fwd : mne.Forward
            EEG forward model on a surface source space.
        noise_cov : mne.Covariance | None
            Noise covariance used to whiten data and gain (e.g.
            :func:`mne.compute_covariance` on the baseline,
            ``tmax=0``, or :func:`mne.make_ad_hoc_cov`). ``None``: no
            whitening (white sensor noise is assumed).
        %(verbose)s

        Returns
        -------
        self : LearnedMMInverse
        """
        n_iter = _check_n_iter(self.n_iter)
        if self.bound is not None and self.bound not in _BOUNDS:
            raise ValueError(f"bound must be one of {', '.join(map(repr, _BOUNDS))} or "
                             f"None (the model's), got {self.bound!r}")
        check_precision(self.precision)
        _check_batch_size(self.batch_size)
        check_n_jobs(self.n_jobs)
        fwd_fixed = fixed_surface_forward(fwd)
        _check_noise_cov(noise_cov, fwd_fixed["info"]["ch_names"])
        device = check_device(self.device)
        solver, config = load_model(self.model, device=device, n_iter=n_iter, bound=self.bound,
                                    precision=self.precision)
        self.device_ = device
        self.solver_, self.config_ = solver, config
        self.fwd_ = _restrict_to_model(fwd_fixed, self.config_)
        start = solver.start_network
        if start is not None and (start.config.patch_set, start.config.patch_pursuit) != (
                None, None):
            start.patches = source_patches(self.fwd_, config,
                                           start.config.patch_orders).to(device)
        self.noise_cov_ = noise_cov
        self._gain_cache = None
        self.sfreq_model_ = float(self.config_["sfreq"])
        self._fit_params = {k: self.get_params()[k] for k in _FIT_PARAMS}
        return self

    # -- apply -------------------------------------------------------------
    @verbose
    def apply(self, inst, *, return_residual=False, verbose=None):
        """Estimate sources.

        Parameters
        ----------
        inst : mne.Evoked | mne.Epochs
            EEG data. Epochs may be lazy (``preload=False``): they are read
            once, bad epochs dropped as :meth:`mne.Epochs.get_data` does.
        return_residual : bool
            Also return the residual (projected, average-referenced data
            minus the predicted data) as the same type as ``inst``.
        %(verbose)s

        Returns
        -------
        stc : mne.SourceEstimate | list of mne.SourceEstimate
            One estimate for an Evoked, a list for Epochs; data in A·m. With
            the start alone (``n_iter=0``, the shipped default) each estimate
            holds its sources as their low-rank factors ``X = F A`` (rank at
            most ``max_rank``), as MNE's linear inverses hold their kernel and
            sensor data: ``stc.data`` is the product, computed when first read.
        residual : mne.Evoked | mne.Epochs
            Only if ``return_residual``.
        """
        if not hasattr(self, "fwd_"):
            raise RuntimeError("Call fit(fwd) before apply().")
        params = self.get_params()
        changed = [k for k, v in self._fit_params.items() if params[k] != v]
        if changed:
            raise RuntimeError(
                f"Parameter(s) {', '.join(changed)} changed since fit(): call "
                "fit(fwd, noise_cov) again before apply().")
        is_epochs = isinstance(inst, mne.BaseEpochs)
        if not (is_epochs or isinstance(inst, mne.Evoked)):
            raise TypeError(f"inst must be Evoked or Epochs, got {type(inst).__name__}")
        _check_batch_size(self.batch_size)
        n_threads = check_n_jobs(self.n_jobs)
        picks, P, G, W = self._prepare_gain(inst.info)
        data = inst.get_data(picks=picks) if is_epochs else inst.data[picks][None]
        if is_epochs and len(data) == 0:
            raise ValueError("The epochs hold no epoch (all dropped?): nothing to solve.")
        _check_data(data)
        Y = P @ data
        _check_flat(Y, data)
        Gw, Yw = (W @ G, W @ Y) if W is not None else (G, Y)
        X = self._solve(Yw, Gw, inst.info["sfreq"], n_threads)
        stcs = [self._to_stc(x, inst) for x in _per_sample(X)]
        out = stcs if is_epochs else stcs[0]
        if not return_residual:
            return out
        return out, _residual(inst, picks, Y - _gain_times(G, X))

    def _prepare_gain(self, info):
        """Picks, projector P, projected gain P G and whitener W (or None).

        Kept for the next call with the same channels, bads and projectors
        (epochs solved in several calls, or evokeds of one recording).
        """
        key = _gain_key(info)
        cached = getattr(self, "_gain_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        out = self._compute_gain(info)
        self._gain_cache = (key, out)
        return out

    def _compute_gain(self, info):
        exclude = list(info["bads"])
        if self.noise_cov_ is not None:
            exclude += [ch for ch in self.noise_cov_["bads"] if ch not in exclude]
        picks = mne.pick_types(info, meg=False, eeg=True, exclude=exclude)
        if len(picks) == 0:
            n_eeg = len(mne.pick_types(info, meg=False, eeg=True, exclude=()))
            raise ValueError(
                "No EEG channels found in the data" if n_eeg == 0 else
                f"All {n_eeg} EEG channels are marked as bad: nothing left to solve with.")
        if len(picks) < MIN_CHANNELS:
            raise ValueError(
                f"Too few EEG channels: {len(picks)} good channel(s), the learned MM solver "
                f"needs at least {MIN_CHANNELS} (after the average reference, n - 1 "
                "dimensions remain for the data term).")
        if len(picks) < FEW_CHANNELS:
            warn(f"Only {len(picks)} good EEG channels: source localization degrades "
                 f"with few channels (the shipped model is measured on 32 to 128).")
        ch_names = [info["ch_names"][k] for k in picks]
        missing = sorted(set(ch_names) - set(self.fwd_["info"]["ch_names"]))
        if missing:
            raise ValueError(
                f"{len(missing)} EEG channel(s) in the data are not present in the forward "
                f"solution ({missing[:10]}). Drop them with inst.drop_channels(...) or mark "
                "them as bad, or compute a forward for this montage "
                "(mne_learned_mm.make_fsaverage_forward(info)).")
        fwd = mne.pick_channels_forward(self.fwd_, ch_names, ordered=True, verbose=False)
        info_eeg = _projected_info(info, picks)
        P, n_proj = _projector(info_eeg)
        G = P @ fwd["sol"]["data"]
        extra = n_proj - 1
        logger.info(f"Using {len(ch_names)} EEG channels, average reference"
                    + (f" and {extra} other projector(s)" if extra else "")
                    + " applied to data and gain")
        if len(ch_names) - n_proj < 2:
            raise ValueError(
                f"The projectors leave {len(ch_names) - n_proj} dimension(s) of the "
                f"{len(ch_names)} channels: too few for the data term.")
        W = None
        if self.noise_cov_ is not None:
            W = _whitener(self.noise_cov_, info_eeg, ch_names)
            logger.info("Whitening data and gain with the noise covariance")
        return picks, P, G, W

    def _solve(self, Y, G, sfreq, n_threads):
        """Sources of each ``Y[k]`` in A·m: an array, or a pair of factors ``(F, A)``.

        With the start alone (``n_iter=0``) the sources ``X = F A`` have the
        rank of the denoised data (at most ``max_rank``); they are kept as
        those factors, as MNE keeps a linear inverse's kernel and sensor data
        (``SourceEstimate((kernel, sens_data), ...)``), so ``stc.data`` is
        their product, computed when first read.
        """
        low_rank = self.solver_.low_rank
        n_times = Y.shape[-1]
        # the start works per time sample; only the MM iterations' temporal convolutions
        # were trained at the model's rate
        resample = (abs(sfreq / self.sfreq_model_ - 1) > _SFREQ_TOL
                    and self.solver_.module.config.n_iter > 0)
        if resample:
            logger.info(f"Resampling {sfreq:g} Hz data to the model's "
                        f"{self.sfreq_model_:g} Hz and back")
            Y = mne.filter.resample(Y, up=self.sfreq_model_, down=sfreq, npad="auto",
                                    verbose=False)
        L = torch.as_tensor(G, dtype=torch.float32, device=self.device_)
        # CPU: n_jobs workers share the epochs (see n_jobs in the class docstring)
        n_workers = max(min(n_threads, len(Y)), 1) if self.device_.type == "cpu" else 1
        batch_size = max(min(int(self.batch_size), -(-len(Y) // n_workers)), 1)
        starts = range(0, len(Y), batch_size)
        n_workers = min(n_workers, len(starts))
        n_intra = 1 if low_rank else max(n_threads // n_workers, 1)
        if low_rank:  # float64, filled batch by batch
            r = min(self.solver_.start_network.config.max_rank, *Y.shape[1:])
            X = (np.empty((len(Y), G.shape[1], r)), np.empty((len(Y), r, Y.shape[-1])))
        else:
            X = np.empty((len(Y), G.shape[1], Y.shape[-1]))

        def solve(start):
            Yb = torch.as_tensor(Y[start:start + batch_size], dtype=torch.float32,
                                 device=self.device_)
            if low_rank:
                F, A, history = self.solver_.solve_low_rank(Yb, L)
                LX = (L @ F) @ A
            else:
                Xb, history = self.solver_.solve(Yb, L)
                Xb = Xb.detach()
                LX = L @ Xb
            if not bool(torch.isfinite(LX).all()):  # NaN or inf where a source is
                raise RuntimeError(
                    "The solver returned NaN or infinite sources: the model's weights or "
                    "the data are broken (check the model with "
                    "mne_learned_mm.pretrained.load_state).")
            alpha = fitted_scale(Yb, LX).cpu().numpy()[:, None, None]
            stop = start + len(Yb)
            if low_rank:
                np.multiply(F.cpu().numpy(), alpha, out=X[0][start:stop])
                X[1][start:stop] = A.cpu().numpy()
            else:
                np.multiply(Xb.cpu().numpy(), alpha, out=X[start:stop])
            return history.as_numpy()

        with _torch_threads(n_intra):
            if n_workers > 1:  # torch releases the GIL inside its operations
                with ThreadPoolExecutor(n_workers) as pool:
                    histories = list(pool.map(solve, starts))
            else:
                histories = [solve(start) for start in starts]
        self.history_ = _merge_histories(histories)
        if resample:
            X = mne.filter.resample(X, up=sfreq, down=self.sfreq_model_, npad="auto",
                                    verbose=False)
            X = _fit_length(X, n_times)
        return X

    def _to_stc(self, X, inst):
        src = self.fwd_["src"]
        return mne.SourceEstimate(X, vertices=[s["vertno"] for s in src],
                                  tmin=inst.times[0], tstep=1.0 / inst.info["sfreq"],
                                  subject=src._subject)


@verbose
def apply_learned_mm(inst, fwd, noise_cov=None, *, model=DEFAULT_MODEL, n_iter=None,
                     bound=None, device="auto", precision="auto", batch_size=64, n_jobs=None,
                     return_residual=False, verbose=None):
    """Estimate sources with the learned MM solver.

    Parameters
    ----------
    inst : mne.Evoked | mne.Epochs
        EEG data (any reference; the average reference and the projectors in
        ``info["projs"]`` are applied internally).
    fwd : mne.Forward
        EEG forward model on the model's source space (fsaverage ico3 for the
        default model). Free-orientation surface forwards are converted to
        fixed (surface-normal) orientation.
    noise_cov : mne.Covariance | None
        Optional noise covariance for whitening (e.g.
        ``mne.compute_covariance(epochs, tmax=0)``).
    model : str | path-like
        Packaged model name or model directory.
    n_iter : int | None
        Number of MM iterations (``0``: the learned start alone; ``None``: the model's).
    bound : "analytic" | "hvp" | "min" | "none" | "scaled" | None
        Curvature bound (``None``: the model's).
    device : "auto" | "cpu" | "cuda" | "cuda:<index>"
        Where to solve.
    precision : "auto" | "float32" | "float16"
        Storage of the start network's weights (see :class:`LearnedMMInverse`).
    batch_size : int
        Number of epochs solved at once.
    n_jobs : int | None
        CPU threads (see :class:`~mne_learned_mm.LearnedMMInverse`): batches of
        epochs solved at once.
    return_residual : bool
        Also return the residual.
    %(verbose)s

    Returns
    -------
    stc : mne.SourceEstimate | list of mne.SourceEstimate
        Source estimate(s) in A·m, ``subject`` from the forward (low-rank
        factors with the start alone, see :meth:`LearnedMMInverse.apply`).
    residual : mne.Evoked | mne.Epochs
        Only if ``return_residual``.

    Notes
    -----
    See the Notes of :class:`~mne_learned_mm.LearnedMMInverse` (the default
    start alone vs ``n_iter=10``, focal sources).
    """
    inv = LearnedMMInverse(model=model, n_iter=n_iter, bound=bound, device=device,
                           precision=precision, batch_size=batch_size, n_jobs=n_jobs)
    inv.fit(fwd, noise_cov)
    return inv.apply(inst, return_residual=return_residual)


# -- helpers -----------------------------------------------------------------
def _restrict_to_model(fwd, config):
    subject = fwd["src"]._subject
    if config.get("subject") and subject != config["subject"]:
        raise ValueError(
            f"The forward is on subject {subject!r} but the model was trained on "
            f"{config['subject']!r}. Train a model for this forward: python -m "
            "mne_learned_mm.training --fwd your-fwd.fif --out model_dir")
    model_verts = [np.asarray(v) for v in config["vertices"]]
    fwd_verts = [s["vertno"] for s in fwd["src"]]
    if all(np.array_equal(a, b) for a, b in zip(model_verts, fwd_verts)):
        return fwd
    contained = all(np.isin(m, f).all() for m, f in zip(model_verts, fwd_verts))
    n_model = sum(len(v) for v in model_verts)
    n_fwd = sum(len(v) for v in fwd_verts)
    if not contained:
        raise ValueError(
            f"The forward's source space ({n_fwd} sources) does not contain the model's "
            f"{n_model} source vertices (e.g. fsaverage ico3). Use a forward on the "
            "model's source space (mne_learned_mm.make_fsaverage_forward(info)), or "
            "train a model for this forward: python -m mne_learned_mm.training --fwd "
            "your-fwd.fif --out model_dir")
    logger.info(f"Restricting the forward from {n_fwd} to the model's {n_model} sources")
    stc = mne.SourceEstimate(np.zeros((n_model, 1)), model_verts, 0, 1, subject=subject)
    return mne.forward.restrict_forward_to_stc(fwd, stc, on_missing="raise")


def _average_reference(data):
    return data - data.mean(axis=-2, keepdims=True)


def _gain_key(info):
    """What :meth:`LearnedMMInverse._prepare_gain` depends on in ``info``."""
    projs = tuple((p["desc"], p["active"], np.asarray(p["data"]["data"]).tobytes())
                  for p in info["projs"])
    return tuple(info["ch_names"]), tuple(info["bads"]), projs


def _check_n_iter(n_iter):
    if n_iter is None:
        return None
    if isinstance(n_iter, bool):
        raise TypeError(f"n_iter must be a non-negative int or None, got {n_iter!r}")
    try:
        value = operator.index(n_iter)
    except TypeError:
        raise TypeError(f"n_iter must be a non-negative int or None, got {n_iter!r} "
                        f"({type(n_iter).__name__})") from None
    if value < 0:
        raise ValueError(f"n_iter must be a non-negative int (MM iterations; 0: the start "
                         f"alone) or None, got {value}")
    return value


def _check_batch_size(batch_size):
    try:
        value = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}") from None
    if value < 1 or isinstance(batch_size, bool):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _check_noise_cov(noise_cov, fwd_ch_names):
    """Refuse a bad covariance at fit time, in MNE's words."""
    if noise_cov is None:
        return
    if not isinstance(noise_cov, mne.Covariance):
        raise TypeError(
            f"noise_cov must be an instance of Covariance or None, got "
            f"{type(noise_cov).__name__} (e.g. mne.compute_covariance(epochs, tmax=0) or "
            "mne.make_ad_hoc_cov(info))")
    common = set(noise_cov["names"]) & set(fwd_ch_names)
    if not common:
        raise ValueError(
            "The noise covariance has none of the forward's EEG channels "
            f"(covariance: {noise_cov['names'][:5]}..., forward: {fwd_ch_names[:5]}...).")
    data = noise_cov["data"]
    diag = data if noise_cov["diag"] else np.diag(data)
    if not np.isfinite(data).all():
        raise ValueError("The noise covariance contains NaN or infinite values.")
    if (diag < 0).any():
        raise ValueError("The noise covariance has negative variances: it is not a "
                         "covariance matrix.")
    if not noise_cov["diag"] and not np.allclose(data, data.T, rtol=1e-6,
                                                 atol=1e-12 * max(np.abs(diag).max(), 1e-300)):
        raise ValueError("The noise covariance matrix is not symmetric.")
    idx = [noise_cov["names"].index(ch) for ch in sorted(common)]
    if not (diag[idx] > 0).any():
        raise ValueError("The noise covariance is zero on all EEG channels of the forward.")


def _projected_info(info, picks):
    """EEG info of the picked channels: their projectors (all, as MNE's inverse) and the
    average reference, no bads."""
    info = mne.pick_info(info, picks, verbose=False)
    projs = []
    for proj in info["projs"]:
        if proj["desc"] == "Average EEG reference":
            continue  # replaced by a fresh one on these channels
        proj = copy.deepcopy(proj)
        proj["active"] = True
        projs.append(proj)
    with info._unlock():
        info["bads"] = []
        info["projs"] = projs
    avg = make_eeg_average_ref_proj(info, activate=True, verbose=False)
    with info._unlock():
        info["projs"] = [avg] + projs
    return info


def _projector(info):
    """Projector of all of ``info["projs"]`` on its channels, and its rank deficit."""
    P, _, U = make_projector(info["projs"], info["ch_names"], include_active=True)
    return P, U.shape[1]


def _whitener(noise_cov, info, ch_names):
    """Whitener of the projected channels, as mne.minimum_norm builds it."""
    missing = [ch for ch in ch_names if ch not in noise_cov["names"]]
    if missing:
        raise ValueError(
            f"{len(missing)} EEG channel(s) of the data are missing from the noise "
            f"covariance: {missing[:10]}. Compute the covariance on the same channels, or "
            "mark them as bad.")
    cov = prepare_noise_cov(noise_cov, info, ch_names, rank=None, verbose=False)
    W, _ = compute_whitener(cov, info, picks=ch_names, pca=False, rank=None, verbose=False)
    return W


def _check_data(data):
    if not np.isfinite(data).all():
        raise ValueError("The data contain NaN or infinite values; interpolate or drop "
                         "the affected channels or epochs first.")


def _check_flat(Y, data):
    """``Y``: projected (average-referenced) ``data``, shape (n_batch, n_channels, n_times)."""
    scale = np.abs(data).max(axis=(1, 2))
    norm = np.linalg.norm(Y, axis=(1, 2))
    flat = (norm <= 1e-12 * np.maximum(scale, 1e-300)) | (scale == 0)
    if flat.any():
        raise ValueError(
            f"{int(flat.sum())} epoch(s)/evoked are flat (all zero or constant over "
            "channels after average reference and projectors): the cosine data term is "
            "undefined.")


@contextlib.contextmanager
def _torch_threads(n_threads):
    old = torch.get_num_threads()
    if n_threads != old:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _fit_length(X, n_times):
    if X.shape[-1] >= n_times:
        return X[..., :n_times]
    pad = [(0, 0)] * (X.ndim - 1) + [(0, n_times - X.shape[-1])]
    return np.pad(X, pad, mode="edge")


def _per_sample(X):
    """Each sample's sources: an array, or a (patterns, time courses) pair."""
    return zip(*X) if isinstance(X, tuple) else X


def _gain_times(G, X):
    """``G X`` for sources as an array or as factors ``(F, A)`` (``G F A``)."""
    return (G @ X[0]) @ X[1] if isinstance(X, tuple) else G @ X


def _merge_histories(histories):
    return {key: np.concatenate([h[key] for h in histories]) for key in histories[0]}


def _residual(inst, picks, res):
    names = [inst.ch_names[k] for k in picks]
    if isinstance(inst, mne.BaseEpochs) and not inst.preload:
        # lazy epochs: get_data() has read them once (dropping bad epochs); build the
        # residual from the arrays instead of reading the raw data again
        info = mne.pick_info(inst.info, picks, verbose=False)
        return mne.EpochsArray(res, info, events=inst.events, tmin=inst.tmin,
                               event_id=inst.event_id, metadata=inst.metadata,
                               baseline=None, verbose=False)
    out = inst.copy().pick(names, verbose=False)
    if isinstance(out, mne.BaseEpochs):
        out._data = res.astype(out._data.dtype)
    else:
        out.data = res[0]
    return out
