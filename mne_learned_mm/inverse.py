"""MNE objects in and out: :class:`LearnedMMInverse` and :func:`apply_learned_mm`.

Flow: ``Evoked/Epochs + Forward`` → channel matching, average reference,
optional whitening → arrays ``Y (B, n, t)``, ``L (n, s)`` → the learned MM
solver (``mne_learned_mm.solver``) → least-squares amplitude scaling →
:class:`mne.SourceEstimate` in A·m.
"""

import inspect
import json
import warnings

import mne
import numpy as np
import torch
from mne.utils import fill_doc, logger, verbose
from scipy import sparse

from .pretrained import DEFAULT_MODEL, load_model

_SFREQ_TOL = 0.05  # relative sampling-rate mismatch tolerated without resampling


def _pick_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@fill_doc
class LearnedMMInverse:
    """Learned Majorization-Minimization EEG inverse solver.

    Follows scikit-learn's estimator rules: parameters are stored as given,
    :meth:`fit` prepares the gain matrix and sets the attributes ending in
    ``_``, :meth:`apply` solves.

    Parameters
    ----------
    model : str | path-like
        A packaged model name (``"default"``: fsaverage ico3, 90-channel
        10-20 montage, SEREEGA-style training data) or a model directory
        written by the training CLI.
    n_iter : int | None
        Number of MM iterations; ``None`` uses the model's trained value.
    bound : "analytic" | "hvp" | "min" | "none" | None
        Curvature bound used in the projection; ``None`` uses the model's.
    device : "auto" | "cpu" | "cuda" | torch.device
        Where to solve. ``"auto"`` uses a GPU when available.
    batch_size : int
        Number of epochs solved at once.
    deflate : bool
        Solve twice: once, then from the strongest source blob plus a solve
        of the residual data, with the MM iterations on the data (see
        :func:`~mne_learned_mm.solver.init.deflation_start`). Weaker sources
        beside a strong one are localised better, at three times the cost and
        with some spurious activity when there is only one source (measured
        in ``benchmarks/RESULTS.md``, seventh session).
    %(verbose)s

    Attributes
    ----------
    config_ : dict
        The model's configuration (source space, sampling rate, training).
    fwd_ : mne.Forward
        The forward restricted to the model's sources, fixed orientation.
    history_ : dict
        Of the last solve: ``cost`` (n_batch, n_iter + 1) lower-level cost per
        iteration, ``n_shrinks`` and ``rejected`` (n_batch, n_iter) from the
        descent certificate, ``frac_hi``/``frac_lo`` (fraction of p clipped at
        the bounds) and ``nu_hi`` (the upper bound used).

    Notes
    -----
    The learned prior assumes what it was trained on: extended cortical
    patches (about 1 cm across and larger). A focal, dipole-like source is
    explained by an extended patch instead, often 1-3 cm away; for such
    sources sLORETA, eLORETA or a dipole fit localise better (generalization probe in
    ``benchmarks/RESULTS.md``).
    """

    def __init__(self, model=DEFAULT_MODEL, *, n_iter=None, bound=None, device="auto",
                 batch_size=64, deflate=False, verbose=None):
        self.model = model
        self.n_iter = n_iter
        self.bound = bound
        self.device = device
        self.batch_size = batch_size
        self.deflate = deflate
        self.verbose = verbose

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

    def save(self, fname):
        """Save the parameters (JSON).

        Parameters
        ----------
        fname : path-like
            Output file, conventionally ending in ``-lmm.json``.
        """
        params = {k: (str(v) if not isinstance(v, (int, float, type(None))) else v)
                  for k, v in self.get_params().items()}
        with open(fname, "w") as fid:
            json.dump({"LearnedMMInverse": params}, fid, indent=2)

    @classmethod
    def load(cls, fname):
        """Load an estimator saved with :meth:`save`.

        Returns
        -------
        inv : LearnedMMInverse
        """
        with open(fname) as fid:
            content = json.load(fid)
        if "LearnedMMInverse" not in content:
            raise ValueError(f"{fname} is not a LearnedMMInverse file")
        return cls(**content["LearnedMMInverse"])

    # -- fit ---------------------------------------------------------------
    @verbose
    def fit(self, fwd, noise_cov=None, *, verbose=None):
        """Prepare the gain matrix and check the model's compatibility.

        Parameters
        ----------
        fwd : mne.Forward
            EEG forward model on a surface source space.
        noise_cov : mne.Covariance | None
            Noise covariance used to whiten data and gain. ``None``: no
            whitening (white sensor noise is assumed).
        %(verbose)s

        Returns
        -------
        self : LearnedMMInverse
        """
        self.device_ = _pick_device(self.device)
        self.solver_, self.config_ = load_model(
            self.model, device=self.device_, n_iter=self.n_iter, bound=self.bound)
        self.fwd_ = _fixed_surface_forward(fwd)
        self.fwd_ = _restrict_to_model(self.fwd_, self.config_)
        self.noise_cov_ = noise_cov
        self.sfreq_model_ = float(self.config_["sfreq"])
        self.neighbours_ = (_ring_neighbours(self.fwd_).to(self.device_) if self.deflate
                            else None)  # on the solve's device once, not per batch
        return self

    # -- apply -------------------------------------------------------------
    @verbose
    def apply(self, inst, *, return_residual=False, verbose=None):
        """Estimate sources.

        Parameters
        ----------
        inst : mne.Evoked | mne.Epochs
            EEG data.
        return_residual : bool
            Also return the residual (average-referenced data minus the
            predicted data) as the same type as ``inst``.
        %(verbose)s

        Returns
        -------
        stc : mne.SourceEstimate | list of mne.SourceEstimate
            One estimate for an Evoked, a list for Epochs; data in A·m.
        residual : mne.Evoked | mne.Epochs
            Only if ``return_residual``.
        """
        if not hasattr(self, "fwd_"):
            raise RuntimeError("Call fit(fwd) before apply().")
        is_epochs = isinstance(inst, mne.BaseEpochs)
        if not (is_epochs or isinstance(inst, mne.Evoked)):
            raise TypeError(f"inst must be Evoked or Epochs, got {type(inst).__name__}")
        picks, G, W = self._prepare_gain(inst.info)
        data = inst.get_data()[:, picks] if is_epochs else inst.data[picks][None]
        _check_data(data)
        Y = _average_reference(data)
        Gw, Yw = (W @ G, np.einsum("ij,bjt->bit", W, Y)) if W is not None else (G, Y)
        X = self._solve(Yw, Gw, inst.info["sfreq"])
        X *= _amplitude_scale(Yw, Gw, X)[:, None, None]
        stcs = [self._to_stc(x, inst) for x in X]
        out = stcs if is_epochs else stcs[0]
        if not return_residual:
            return out
        return out, _residual(inst, picks, Y - np.einsum("ij,bjt->bit", G, X))

    def _prepare_gain(self, info):
        picks = mne.pick_types(info, meg=False, eeg=True, exclude="bads")
        if len(picks) == 0:
            n_eeg = len(mne.pick_types(info, meg=False, eeg=True, exclude=()))
            raise ValueError(
                "No EEG channels found in the data" if n_eeg == 0 else
                f"All {n_eeg} EEG channels are marked as bad: nothing left to solve with.")
        ch_names = [info["ch_names"][k] for k in picks]
        missing = sorted(set(ch_names) - set(self.fwd_["info"]["ch_names"]))
        if missing:
            raise ValueError(
                f"{len(missing)} EEG channel(s) in the data are not present in the forward "
                f"solution ({missing[:10]}). Drop them with inst.drop_channels(...) or mark "
                "them as bad, or compute a forward for this montage "
                "(mne_learned_mm.make_fsaverage_forward(info)).")
        fwd = mne.pick_channels_forward(self.fwd_, ch_names, ordered=True, verbose=False)
        G = _average_reference(fwd["sol"]["data"][None])[0]
        logger.info(f"Using {len(ch_names)} EEG channels, average reference applied to "
                    "data and gain")
        W = None
        if self.noise_cov_ is not None:
            W = _whitener(self.noise_cov_, mne.pick_info(info, picks))
            logger.info("Whitening data and gain with the noise covariance")
        return picks, G, W

    def _solve(self, Y, G, sfreq):
        n_times = Y.shape[-1]
        resample = abs(sfreq / self.sfreq_model_ - 1) > _SFREQ_TOL
        if resample:
            logger.info(f"Resampling {sfreq:g} Hz data to the model's "
                        f"{self.sfreq_model_:g} Hz and back")
            Y = mne.filter.resample(Y, up=self.sfreq_model_, down=sfreq, npad="auto",
                                    verbose=False)
        L = torch.as_tensor(G, dtype=torch.float32, device=self.device_)
        out, hist = [], []
        for start in range(0, len(Y), self.batch_size):
            Yb = torch.as_tensor(Y[start:start + self.batch_size], dtype=torch.float32,
                                 device=self.device_)
            X, history = self.solver_.solve(Yb, L, neighbours=self.neighbours_)
            out.append(X.detach().cpu().double().numpy())
            hist.append(history.as_numpy())
        self.history_ = _merge_histories(hist)
        X = np.concatenate(out)
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
def apply_learned_mm(evoked, fwd, noise_cov=None, *, model=DEFAULT_MODEL, n_iter=None,
                     device="auto", deflate=False, return_residual=False, verbose=None):
    """Estimate sources with the learned MM solver.

    Parameters
    ----------
    evoked : mne.Evoked | mne.Epochs
        EEG data (any reference; the average reference is applied internally).
    fwd : mne.Forward
        EEG forward model on the model's source space (fsaverage ico3 for the
        default model). Free-orientation surface forwards are converted to
        fixed (surface-normal) orientation.
    noise_cov : mne.Covariance | None
        Optional noise covariance for whitening.
    model : str | path-like
        Packaged model name or model directory.
    n_iter : int | None
        Number of MM iterations (``None``: the model's).
    device : "auto" | "cpu" | "cuda"
        Where to solve.
    deflate : bool
        Solve a second time after removing the strongest source (see
        :class:`~mne_learned_mm.LearnedMMInverse`).
    return_residual : bool
        Also return the residual.
    %(verbose)s

    Returns
    -------
    stc : mne.SourceEstimate | list of mne.SourceEstimate
        Source estimate(s) in A·m, ``subject`` from the forward.
    residual : mne.Evoked | mne.Epochs
        Only if ``return_residual``.

    Notes
    -----
    The model assumes extended sources; see the Notes of
    :class:`~mne_learned_mm.LearnedMMInverse` for focal ones.
    """
    inv = LearnedMMInverse(model=model, n_iter=n_iter, device=device, deflate=deflate)
    inv.fit(fwd, noise_cov)
    return inv.apply(evoked, return_residual=return_residual)


# -- helpers -----------------------------------------------------------------
_DEFLATION_RINGS = 4  # neighbourhood of the strongest blob, in mesh rings (patch orders 1-5)


def _ring_neighbours(fwd, n_rings=_DEFLATION_RINGS):
    """Sources within ``n_rings`` edges of each other on the source-space mesh."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # holes in use_tris: edges to unused vertices dropped
        adjacency = mne.spatial_src_adjacency(fwd["src"], verbose="error").tocsr()
    step = (adjacency + sparse.identity(adjacency.shape[0], format="csr")).astype(bool)
    reach = step
    for _ in range(n_rings - 1):
        reach = (reach @ step).astype(bool)
    return torch.as_tensor(reach.toarray())


def _fixed_surface_forward(fwd):
    if not isinstance(fwd, mne.Forward):
        raise TypeError(f"fwd must be an mne.Forward, got {type(fwd).__name__}")
    kind = fwd["src"].kind
    if kind != "surface":
        raise ValueError(
            f"The forward has a {kind} source space; the learned MM solver needs a "
            "cortical surface source space with fixed orientation (e.g. "
            "mne_learned_mm.make_fsaverage_forward()).")
    if len(mne.pick_types(fwd["info"], meg=False, eeg=True)) == 0:
        raise ValueError("The forward solution has no EEG channels.")
    if fwd["source_ori"] != mne.io.constants.FIFF.FIFFV_MNE_FIXED_ORI:
        logger.info("Converting the free-orientation forward to fixed orientation "
                    "(surface normal)")
        fwd = mne.convert_forward_solution(fwd, surf_ori=True, force_fixed=True,
                                           use_cps=True, verbose=False)
    return mne.pick_types_forward(fwd, meg=False, eeg=True)


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


def _check_data(data):
    if not np.isfinite(data).all():
        raise ValueError("The data contain NaN or infinite values; interpolate or drop "
                         "the affected channels or epochs first.")
    centred = _average_reference(data)
    scale = np.abs(data).max(axis=(1, 2))
    flat = np.linalg.norm(centred, axis=(1, 2)) <= 1e-12 * np.maximum(scale, 1e-30)
    flat |= scale == 0
    if flat.any():
        raise ValueError(
            f"{int(flat.sum())} epoch(s)/evoked are flat (all zero or constant over "
            "channels after average reference): the cosine data term is undefined.")


def _whitener(noise_cov, info):
    info = info.copy()
    with info._unlock():
        info["projs"] = [mne.make_eeg_average_ref_proj(info, activate=True, verbose=False)]
        info["bads"] = []
    W, _ = mne.cov.compute_whitener(noise_cov, info, pca=False, verbose=False)
    return W


def _amplitude_scale(Y, G, X):
    """Least-squares factor ``α = ⟨Y, G X⟩ / ‖G X‖²`` per sample, shape (B,)."""
    GX = np.einsum("ij,bjt->bit", G, X)
    num = np.einsum("bit,bit->b", Y, GX)
    den = np.einsum("bit,bit->b", GX, GX)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _fit_length(X, n_times):
    if X.shape[-1] >= n_times:
        return X[..., :n_times]
    pad = [(0, 0)] * (X.ndim - 1) + [(0, n_times - X.shape[-1])]
    return np.pad(X, pad, mode="edge")


def _merge_histories(histories):
    return {key: np.concatenate([h[key] for h in histories]) for key in histories[0]}


def _residual(inst, picks, res):
    out = inst.copy().pick([inst.ch_names[k] for k in picks])
    if isinstance(out, mne.BaseEpochs):
        out._data = res.astype(out._data.dtype)
    else:
        out.data = res[0]
    return out
