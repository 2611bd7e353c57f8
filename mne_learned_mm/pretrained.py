"""Model registry: packaged weights, pooch-fetched weights, save and load.

A model is a directory (or a pair of files) holding

* ``weights.pt``: a plain ``state_dict`` of tensors, read with
  ``torch.load(..., weights_only=True)`` so that a malicious pickle is refused;
* ``config.json``: everything needed to rebuild the solver and to refuse an
  incompatible use (source vertices, channel names, sampling rate, solver and
  training configuration, code version).
"""

import json
from importlib import resources
from pathlib import Path

import pooch
import torch
from mne.utils import logger, verbose

from ._config import get_data_dir

WEIGHTS_FNAME = "weights.pt"
CONFIG_FNAME = "config.json"
DEFAULT_MODEL = "default"
#: storage of the start network's weights (:func:`load_model`)
PRECISIONS = ("auto", "float32", "float16")

#: Packaged models: name -> directory inside ``mne_learned_mm/_assets/models``.
PACKAGED = {DEFAULT_MODEL: "fsaverage-ico3-bank-v9"}

#: Models too large to ship: name -> dict(fname, sha256, url).
REGISTRY = {}


def _packaged_dir(name):
    return resources.files("mne_learned_mm") / "_assets" / "models" / PACKAGED[name]


def list_models():
    """Names of the packaged and downloadable models.

    Returns
    -------
    names : list of str
    """
    return sorted(set(PACKAGED) | set(REGISTRY))


@verbose
def fetch_pretrained(name, *, registry=None, path=None, verbose=None):
    """Download (once) a registered model file and return its local path.

    Parameters
    ----------
    name : str
        Registry key.
    registry : dict | None
        Registry to use, ``name -> dict(fname=..., sha256=..., url=...)``.
        ``None`` uses :data:`REGISTRY`.
    path : path-like | None
        Cache directory. ``None`` uses ``<MNE_LEARNED_MM_DATA>/models``.
    %(verbose)s

    Returns
    -------
    fname : pathlib.Path
        Local file, verified against its sha256 hash.
    """
    registry = REGISTRY if registry is None else registry
    if name not in registry:
        raise ValueError(
            f"Unknown model {name!r}. Available: {', '.join(list_models()) or 'none'}.")
    entry = registry[name]
    path = Path(path) if path is not None else get_data_dir("models")
    try:
        fname = pooch.retrieve(entry["url"], known_hash=f"sha256:{entry['sha256']}",
                               fname=entry["fname"], path=path, progressbar=False)
    except ValueError as exc:  # hash mismatch: pooch does not keep the file
        raise RuntimeError(
            f"The downloaded file for model {name!r} does not match its sha256 hash "
            f"and was discarded: {exc}") from None
    except Exception as exc:  # requests' connection errors and HTTP errors
        raise RuntimeError(
            f"Could not download model {name!r} from {entry['url']} ({type(exc).__name__}). "
            "Check your internet connection, or use a packaged model "
            f"({', '.join(PACKAGED)}) or a local model directory.") from None
    logger.info(f"Model {name!r} available at {fname}")
    return Path(fname)


def save_model(directory, state_dict, config):
    """Write weights and configuration of a model.

    Parameters
    ----------
    directory : path-like
        Output directory (created).
    state_dict : dict of str -> Tensor
        Model weights.
    config : dict
        JSON-serialisable configuration.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save(state, directory / WEIGHTS_FNAME)
    with open(directory / CONFIG_FNAME, "w") as fid:
        json.dump(config, fid, indent=2, sort_keys=True)


def _resolve(name_or_path):
    if isinstance(name_or_path, str) and name_or_path in PACKAGED:
        return _packaged_dir(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        fname = fetch_pretrained(name_or_path)
        return _unpack_zip(fname)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"Model {str(name_or_path)!r} is neither a known model name "
            f"({', '.join(list_models())}) nor an existing directory.")
    return path


def _unpack_zip(fname):
    out = Path(str(fname) + ".unzip")
    if not out.is_dir():
        import zipfile

        with zipfile.ZipFile(fname) as zf:
            zf.extractall(out)
    return out


def load_state(name_or_path):
    """Read weights and configuration of a model.

    Parameters
    ----------
    name_or_path : str | path-like
        A packaged or registered model name, or a model directory.

    Returns
    -------
    state_dict : dict of str -> Tensor
    config : dict
    """
    directory = _resolve(name_or_path)
    with resources.as_file(directory) as directory:
        directory = Path(directory)
        try:
            with open(directory / CONFIG_FNAME) as fid:
                config = json.load(fid)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"Model at {directory} has no readable {CONFIG_FNAME}: {exc}") from None
        if not (directory / WEIGHTS_FNAME).is_file():
            raise FileNotFoundError(
                f"Model at {directory} has no {WEIGHTS_FNAME}: a model directory holds "
                f"{WEIGHTS_FNAME} and {CONFIG_FNAME} (as the training CLI writes them).")
        try:
            state = torch.load(directory / WEIGHTS_FNAME, map_location="cpu",
                               weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"Refusing to load {directory / WEIGHTS_FNAME}: it is not a plain tensor "
                f"state_dict readable with weights_only=True ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{directory / WEIGHTS_FNAME} does not hold a state_dict of tensors")
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"{directory / WEIGHTS_FNAME} holds NaN or infinite weights in "
                         f"{len(broken)} tensor(s) ({', '.join(broken[:3])}): the model is "
                         "broken (a diverged training run?); retrain or use another model.")
    return state, config


# -- building solvers from a configuration -------------------------------------------
def build_solver(kind, solver_kwargs, n_sources):
    """Instantiate the solver module described by a model configuration.

    Parameters
    ----------
    kind : "mm" | "4dvarnet"
        Learned MM solver or the unrolled 4DVarNet baseline.
    solver_kwargs : dict
        Flat solver settings, as a model's ``config.json`` stores them (see
        :func:`~mne_learned_mm.solver.mm.split_solver_config`); an unknown
        key is an error.
    n_sources : int
        Number of sources.

    Returns
    -------
    module : torch.nn.Module
    """
    if kind == "mm":
        from .solver.mm import LearnedMM as cls
    elif kind == "4dvarnet":
        from .solver.unrolled import UnrolledSolver as cls
    else:
        raise ValueError(f'Unknown solver kind {kind!r}: expected "mm" or "4dvarnet"')
    return cls(int(n_sources), **dict(solver_kwargs))


class SolverPipeline:
    """A trained solver with its starting point: ``solve(Y, L) -> (X, history)``.

    ``Y`` and ``L`` are rescaled by :func:`~mne_learned_mm.solver.init.normalise_problem`
    first (the cosine costs do not see the scale), so ``X`` is unit-free.

    Parameters
    ----------
    module : torch.nn.Module
        The solver (``forward(Y, L, X0=None) -> (X, history)``).
    init : "random" | "tikhonov" | "prior" | "amortized"
        Starting point, as trained (see
        :func:`~mne_learned_mm.solver.init.initial_point`, which training
        uses too).
    init_reg : float
        Regularisation of the Tikhonov start.
    start_network : mne_learned_mm.solver.start.StartNetwork | None
        Needed for ``init="amortized"``.
    """

    def __init__(self, module, init="tikhonov", init_reg=1.0 / 9.0, start_network=None):
        if init == "amortized" and start_network is None:
            raise ValueError('init="amortized" needs the start network')
        self.module = module
        self.init = init
        self.init_reg = init_reg
        self.start_network = start_network

    def solve(self, Y, L):
        """Solve a batch.

        Parameters
        ----------
        Y : Tensor, shape (n_batch, n_sensors, n_times)
        L : Tensor, shape (n_sensors, n_sources)

        Returns
        -------
        X : Tensor, shape (n_batch, n_sources, n_times)
        history : mne_learned_mm.solver.mm.SolverHistory
        """
        from .solver.init import unit_frobenius

        Y, L = unit_frobenius(Y), self._normalised_leadfield(L)
        with torch.no_grad():
            return self._solve_normalised(Y, L)

    @property
    def low_rank(self):
        """Whether a solve is the amortized start alone, ``X = F A`` of rank ≤ ``max_rank``."""
        return self.init == "amortized" and getattr(self.module.config, "n_iter", None) == 0

    def solve_low_rank(self, Y, L):
        """Solve a batch as the factors of ``X = F A`` (only when :attr:`low_rank`).

        The amortized start alone (:func:`~mne_learned_mm.solver.start.start_factors`),
        in the scale of :meth:`solve`'s up to one factor per sample (the cosine
        costs do not see it; the caller fits the amplitude).

        Parameters
        ----------
        Y, L : Tensor
            As in :meth:`solve`.

        Returns
        -------
        F : Tensor, shape (n_batch, n_sources, r)
            Source patterns.
        A : Tensor, shape (n_batch, r, n_times)
            Their time courses.
        history : mne_learned_mm.solver.mm.SolverHistory
            No iteration, no cost (NaN), as :meth:`solve` with ``n_iter=0``.
        """
        from .solver.init import unit_frobenius
        from .solver.mm import start_only_history
        from .solver.start import start_factors

        if not self.low_rank:
            raise RuntimeError("solve_low_rank needs the amortized start alone (n_iter=0)")
        Y, L = unit_frobenius(Y), self._normalised_leadfield(L)
        with torch.no_grad():
            F, A = start_factors(Y, L, self.start_network, K=self._operator(L))
        return F, A, start_only_history(Y[:, 0, 0])

    def start(self, Y, L):
        """The solve's starting point ``X0`` (e.g. ``Φ(K Y)``).

        Parameters
        ----------
        Y : Tensor, shape (n_batch, n_sensors, n_times)
        L : Tensor, shape (n_sensors, n_sources)
            Both as :func:`~mne_learned_mm.solver.init.normalise_problem`
            returns them.

        Returns
        -------
        X0 : Tensor, shape (n_batch, n_sources, n_times)
        """
        from .solver.init import initial_point

        K = None if self.init == "random" else self._operator(L)
        return initial_point(Y, L, self.init, K=K, reg=self.init_reg, prior=self.module.prior,
                             network=self.start_network)

    def _normalised_leadfield(self, L):
        """``L`` at unit spectral norm, kept for the next batch with the same ``L``."""
        from .solver.init import unit_spectral

        return self._cached("_leadfield", L, unit_spectral)

    def _operator(self, L):
        """The start's linear operator of ``L``, kept for the next batch: the sLORETA
        operator of the start network, or the Tikhonov operator of ``init_reg``."""
        from .solver.init import tikhonov_operator

        if self.init == "amortized":
            reg, operator = self.start_network.config.reg, "sloreta"
        else:
            reg, operator = self.init_reg, "tikhonov"
        return self._cached(f"_K_{operator}_{reg!r}", L,
                            lambda L_: tikhonov_operator(L_, reg, operator))

    def _cached(self, name, L, compute):
        """``compute(L)``, recomputed only when ``L`` differs from the last call's."""
        from .solver.init import same_tensor

        cached = getattr(self, name, None)
        if cached is None or not same_tensor(cached[0], L):
            cached = (L, compute(L))
            setattr(self, name, cached)
        return cached[1]

    def _solve_normalised(self, Y, L):
        return self.module(Y, L, X0=self.start(Y, L))


def load_model(name_or_path=DEFAULT_MODEL, *, device="cpu", n_iter=None, bound=None,
               start=None, precision="auto"):
    """Load a model as a ready-to-use :class:`SolverPipeline`.

    Parameters
    ----------
    name_or_path : str | path-like
        Packaged/registered model name or model directory.
    device : str | torch.device
    n_iter : int | None
        Override the number of MM iterations.
    bound : str | None
        Override the curvature bound choice.
    start : dict | None
        Override inference settings of the amortized start
        (:class:`~mne_learned_mm.solver.start.StartConfig`'s ``max_rank``,
        ``residual_passes``, ``rotation``, ``single_source``, ``rank_threshold``,
        ``source_set``, ``patch_set``, ``noise_margin``, ``patch_orders``,
        ``patch_pursuit``).
    precision : "auto" | "float32" | "float16"
        Storage of the start network's weights. ``"float16"``: float16
        weights in float32 arithmetic
        (:func:`~mne_learned_mm.solver.start.half_weight_network`), CPU only;
        the same sources to ~1e-6 and faster on CPU, where the solve is bound
        by reading the weights. ``"auto"``: ``"float16"`` on CPU when this
        torch has it, else ``"float32"``.

    Returns
    -------
    pipeline : SolverPipeline
    config : dict
    """
    check_precision(precision)
    state, config = load_state(name_or_path)
    for key in ("kind", "solver", "n_sources", "vertices", "sfreq"):
        if key not in config:
            raise ValueError(f"Model configuration lacks {key!r}: not a mne_learned_mm model")
    if config.get("init_operator", "tikhonov") != "tikhonov":  # models of an old experiment
        raise ValueError(f"init_operator={config['init_operator']!r} is no longer supported: "
                         "the MM start is Φ(K Y) with the Tikhonov operator K")
    solver_kwargs = dict(config["solver"])
    if n_iter is not None:
        solver_kwargs["n_iter"] = int(n_iter)
    if bound is not None:
        solver_kwargs["bound"] = bound
    module = build_solver(config["kind"], solver_kwargs, config["n_sources"])
    start_network = None
    if config.get("init") == "amortized":
        start_network = _build_start(config, state, start)
    state = {k: v for k, v in state.items() if not k.startswith("start.")}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"Model weights do not match their configuration: "
                         f"{str(exc).splitlines()[0]}") from None
    module.eval().to(device)
    if start_network is not None:
        start_network = _start_precision(start_network.eval().to(device), precision)
    return SolverPipeline(module, config.get("init", "tikhonov"),
                          config.get("init_reg", 1.0 / 9.0), start_network), config


def check_precision(precision):
    """Raise a ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")


def _start_precision(network, precision):
    """The start network with the weights ``precision`` asks for (:func:`load_model`)."""
    from .solver.start import half_weight_network

    device = next(network.parameters()).device
    if precision == "float32" or (precision == "auto" and device.type != "cpu"):
        return network
    if device.type != "cpu":
        raise ValueError(f"precision='float16' runs on CPU only, the model is on {device}")
    half = half_weight_network(network)
    if half is None and precision == "float16":
        raise RuntimeError(f"precision='float16' needs torch's dynamic quantization to "
                           f"float16, which torch {torch.__version__} lacks on this CPU: "
                           "use precision='float32'")
    return network if half is None else half


def source_patches(fwd, config, orders):
    """The patches that a model's start chooses among, on the sources of ``fwd``.

    Patches of its training bank's profiles (:func:`~mne_learned_mm._forward.patch_atoms`
    with the recipe's ``profiles``), grown to the start's ``patch_orders``, on the
    mesh of ``fwd``'s source space, for
    :attr:`~mne_learned_mm.solver.start.StartNetwork.patches`
    (``StartConfig.patch_set``).

    Parameters
    ----------
    fwd : mne.Forward
        Fixed-orientation forward on the model's sources, in its order.
    config : dict
        The model's configuration (:func:`load_model`).
    orders : tuple of int
        First and last order (``StartConfig.patch_orders``).

    Returns
    -------
    patches : Tensor, shape (n_patches, n_sources)
        Sparse (COO), float32.
    """
    import numpy as np

    from ._forward import patch_atoms, source_adjacency

    recipe = config.get("recipe") or {}
    atoms = patch_atoms(fwd["source_rr"], source_adjacency(fwd["src"]), tuple(orders),
                        tuple(recipe.get("profiles", ("gaussian", "wide"))))[0].tocoo()
    return torch.sparse_coo_tensor(np.vstack([atoms.row, atoms.col]), atoms.data,
                                   atoms.shape, dtype=torch.float32,
                                   check_invariants=True).coalesce()


def _float_or_none(value):
    return None if value in (None, "none") else float(value)


def _count_or_none(value):
    return None if value in (None, "none") else int(value)


def _orders(value):
    """``(first, last)`` from a pair or from ``"first-last"``."""
    return tuple(int(v) for v in (value.split("-") if isinstance(value, str) else value))


#: inference settings of the start that :func:`load_model`'s ``start`` may override
START_OVERRIDES = {"max_rank": int, "residual_passes": int, "rotation": str,
                   "single_source": _float_or_none, "rank_threshold": float,
                   "source_set": _float_or_none, "patch_set": _float_or_none,
                   "noise_margin": float, "patch_orders": _orders,
                   "patch_pursuit": _count_or_none, "colored_noise": _float_or_none,
                   "rank_share": float}


def _build_start(config, state, overrides=None):
    """The start network of a model: its ``start.*`` weights of ``state``."""
    from .solver.start import StartConfig, StartNetwork

    state = {k[len("start."):]: v for k, v in state.items() if k.startswith("start.")}

    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(START_OVERRIDES))
    if bad:
        raise ValueError(f"start overrides must be {', '.join(START_OVERRIDES)}, got {bad}")
    overrides = {k: START_OVERRIDES[k](v) for k, v in overrides.items()}
    start_config = StartConfig(**{**config["start"], **overrides})
    network = StartNetwork(int(config["n_sources"]), start_config)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"Start-network weights do not match their configuration: "
                         f"{str(exc).splitlines()[0]}") from None
    return network
