"""Train the amortized start on patch-bank topographies; build the shipped model.

One recipe (a JSON file, :data:`RECIPES`) and one command rebuild the model::

    python -m mne_learned_mm.training.start default --out runs/default

The command is resumable (run it again with the same ``--out``), checkpoints
every few minutes, writes a learning-curve CSV (``history_start.csv``: step,
topographies seen, training minutes, loss, validation LE / AUC of the start
on SEREEGA-style windows) and ends by writing ``weights.pt`` and
``config.json``: the start network plus the MM refinement (Φ and the
curvature net). A recipe with several ``members`` trains one network per
member (``--out/member{k}``, each resumable, ``--n-jobs`` of them at once in
their own processes) and the model averages them. The recipe's ``mm`` stages
then train the MM refinement for that frozen start (``--out/mm{k}``, each a
run of :func:`mne_learned_mm.training.loop.train`: Φ as a denoiser of the
start, then Alg. 2), so that one command builds the whole model.
"""

import argparse
import csv
import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from mne.utils import ProgressBar, logger

from .. import __version__
from .._config import check_device
from .._forward import read_forward
from ..evaluation.metrics import ZONE_ORDER, compute_metrics, summarize_metrics
from ..pretrained import load_state, save_model
from ..simulation import SereegaConfig, SimulatedDataset
from ..simulation.bank import BankConfig, PatchBank
from ..solver.init import normalise_problem, tikhonov_operator
from ..solver.start import StartConfig, StartNetwork, amortized_start, peak_loss, start_loss
from .config import TrainConfig
from .loop import CKPT as MM_CKPT
from .loop import train

CKPT = "checkpoint_start.pt"
HISTORY = "history_start.csv"
#: Recipes shipped with the package: name -> JSON file in ``training/recipes``.
RECIPES = ("default", "gpu", "tiny")
#: What a warm restart (:attr:`Optimisation.restarts`) may set.
RESTART_KEYS = ("n_steps", "minutes", "lr", "seed")
#: The fields of an MM stage's TrainConfig that the recipe sets (:meth:`Recipe.mm_config`).
MM_KEYS = ("init", "init_from", "out", "fwd", "device", "solver")
#: Values of :attr:`Optimisation.matmul_dtype`.
MATMUL_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class Optimisation:
    """How the start network is fitted.

    Attributes
    ----------
    batch_size : int
        Topographies per step.
    n_steps : int
        Total steps (the cosine learning-rate schedule spans them).
    minutes : float | None
        Training minutes instead of ``n_steps``: the schedule spans them and
        training stops then, so the same recipe makes as many steps as the
        hardware allows (a GPU many more than a CPU core).
    lr : float
        Peak AdamW learning rate.
    weight_decay : float
    background_weight : float
        Weight of the off-support L1 share in :func:`~.solver.start.start_loss`.
    peak_weight : float
        Weight of :func:`~.solver.start.peak_loss` (each patch's peak on its
        seed, within the localization metric's search zone); 0: not used.
    subset_prob : float
        Probability that a step uses a random channel subset.
    subset_fraction : tuple of float
        Interval of the kept fraction of channels for such a step.
    whiten_prob : float
        Probability that a step whitens with a random noise covariance
        (white plus brain background, share drawn in ``(0, 1)``).
    seed : int
    matmul_dtype : str
        ``"float32"``, or ``"bfloat16"``: the network's forward and backward
        pass under :func:`torch.autocast` (the source image, the weights, the
        optimiser and the losses stay float32). On this project's CPU (AVX512-BF16)
        a step of the default recipe is 2.2 times faster with the same
        validation metrics (``benchmarks/RESULTS.md``); a CPU without bfloat16
        instructions emulates them, so set ``"float32"`` there.
    restarts : tuple of dict
        Further cycles after the first (warm restarts, Loshchilov & Hutter's
        SGDR): each one continues from the previous cycle's weights with a
        fresh AdamW, its own draws (its ``seed``; by default
        ``seed + 100 · cycle + k`` for ensemble member ``k``, see
        :meth:`Recipe.member`) and its own warm-up and cosine schedule, over
        its ``n_steps`` (or ``minutes``) at its ``lr`` (the keys of
        :data:`RESTART_KEYS`; the others as above).
    """

    batch_size: int = 256
    n_steps: int = 20000
    minutes: float = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    background_weight: float = 0.5
    peak_weight: float = 0.0
    subset_prob: float = 0.5
    subset_fraction: tuple = (0.3, 1.0)
    whiten_prob: float = 0.3
    seed: int = 0
    matmul_dtype: str = "float32"
    restarts: tuple = ()

    def __post_init__(self):
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"optim.matmul_dtype must be one of {MATMUL_DTYPES}, "
                             f"got {self.matmul_dtype!r}")
        for r in self.restarts:
            if not isinstance(r, dict) or not set(r) <= set(RESTART_KEYS):
                raise ValueError(f"Each entry of optim.restarts sets some of {RESTART_KEYS}, "
                                 f"got {r!r}")

    def cycles(self):
        """The schedule's cycles: this one, then one per entry of :attr:`restarts`."""
        first = dataclasses.replace(self, restarts=())
        return [first] + [dataclasses.replace(first, **{"seed": self.seed + 100 * c, **r})
                          for c, r in enumerate(self.restarts, 1)]


@dataclasses.dataclass
class Recipe:
    """Everything that builds a model (one concern per field).

    Attributes
    ----------
    bank : BankConfig
    start : StartConfig
    optim : Optimisation
    orders : tuple of int
        Patch orders in the bank.
    profiles : tuple of str
        Spatial profiles in the bank (:data:`~mne_learned_mm.simulation.bank.PROFILES`).
    mm : tuple of dict
        The stages that train the MM refinement (Φ, curvature net) for the
        trained start, in order: each the fields of a
        :class:`~mne_learned_mm.training.config.TrainConfig` but
        :data:`MM_KEYS`, which the recipe sets: the frozen start, the
        previous stage's weights, the output directory, the forward, the
        device and :attr:`mm_solver`. ``()``: the start alone (``n_iter=0``).
    mm_solver : dict
        The solver the stages train (``TrainConfig.solver``: the MM
        iteration, Φ as ``prior_*``, the curvature net as ``net_*``).
    n_iter : int
        The model's number of MM iterations after the start (what
        ``n_iter=None`` uses; ``0``: the start alone, the MM refinement one
        argument away).
    val_samples : int
        SEREEGA-style validation windows (seed 7, never the test seed 42).
    eval_minutes, checkpoint_minutes : float
    members : tuple of dict
        One entry per network of the ensemble (:attr:`StartConfig.members`):
        its overrides of the ``bank`` and ``optim`` sections (``{}``: none).
        Each member trains on its own (``member{k}/`` of ``--out`` when
        there are several) and the model averages them.
    """

    bank: BankConfig = dataclasses.field(default_factory=BankConfig)
    start: StartConfig = dataclasses.field(default_factory=StartConfig)
    optim: Optimisation = dataclasses.field(default_factory=Optimisation)
    orders: tuple = (0, 5)
    profiles: tuple = ("gaussian", "wide")
    mm: tuple = ()
    mm_solver: dict = dataclasses.field(default_factory=dict)
    n_iter: int = 10
    val_samples: int = 64
    eval_minutes: float = 5.0
    checkpoint_minutes: float = 3.0
    members: tuple = ({},)

    @classmethod
    def from_dict(cls, d):
        """Recipe from its JSON form (unknown keys are an error)."""
        parts = {"bank": BankConfig, "start": StartConfig, "optim": Optimisation}
        d = dict(d)
        given = dict(d.get("start", {})).get("members")
        kwargs = {k: _dataclass(parts[k], d.pop(k, {}), k) for k in parts}
        bad = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise ValueError(f"Unknown recipe key(s) {bad}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        recipe = cls(**kwargs, **d)
        for k, member in enumerate(recipe.members):
            if not isinstance(member, dict) or set(member) - {"bank", "optim"}:
                raise ValueError(f"Each recipe member overrides 'bank' and/or 'optim', "
                                 f"got {member!r}")
            recipe.member(k)  # the overrides' keys are valid
        if not recipe.members:
            raise ValueError("A recipe needs at least one member")
        for k in range(len(recipe.mm)):
            recipe.mm_config(k, "start", "mm")  # the stages' fields are valid
        if given is not None and given != len(recipe.members):
            raise ValueError(f"start.members is the number of recipe members "
                             f"({len(recipe.members)}), got {given}")
        recipe.start = dataclasses.replace(recipe.start, members=len(recipe.members))
        return recipe

    def member(self, k):
        """The recipe of ensemble member ``k`` (one network, its overrides applied).

        Its warm restarts draw with seed ``optim.seed + 100 · cycle + k``
        unless they set one, so that no two members or cycles share draws.
        """
        over = self.members[k]
        parts = {"bank": BankConfig, "optim": Optimisation}
        member = dataclasses.replace(
            self, members=({},), start=dataclasses.replace(self.start, members=1),
            **{name: _dataclass(cls, {**dataclasses.asdict(getattr(self, name)),
                                      **over.get(name, {})}, name)
               for name, cls in parts.items()})
        optim = member.optim
        restarts = tuple({"seed": optim.seed + 100 * c + k, **r}
                         for c, r in enumerate(optim.restarts, 1))
        return dataclasses.replace(member, optim=dataclasses.replace(optim, restarts=restarts))

    def mm_config(self, k, init_from, out, fwd=None, device="cpu"):
        """The :class:`~mne_learned_mm.training.config.TrainConfig` of MM stage ``k``.

        Parameters
        ----------
        k : int
        init_from : path-like
            The model this stage starts from: its frozen start network and
            its weights (the start-only model for stage 0, else stage
            ``k - 1``).
        out : path-like
        fwd : path-like | None
        device : str

        Returns
        -------
        cfg : TrainConfig
        """
        stage = self.mm[k]
        if not isinstance(stage, dict) or set(stage) & set(MM_KEYS):
            raise ValueError(f"Each recipe mm stage is a dict of TrainConfig fields other "
                             f"than {MM_KEYS} (the recipe sets them), got {stage!r}")
        cfg = TrainConfig.from_dict({**stage, "solver": dict(self.mm_solver),
                                     "init": "amortized", "init_from": str(init_from),
                                     "out": str(out), "fwd": None if fwd is None else str(fwd),
                                     "device": str(device)})
        return cfg.check()

    def to_dict(self):
        """JSON form."""
        return dataclasses.asdict(self)


def _dataclass(cls, values, name):
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - names)
    if bad:
        raise ValueError(f"Unknown key(s) {bad} in recipe section {name!r}; valid: "
                         f"{sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_recipe(name_or_path):
    """Read a recipe by name (:data:`RECIPES`) or from a JSON file.

    Returns
    -------
    recipe : Recipe
    """
    if name_or_path in RECIPES:
        text = (resources.files(__package__) / "recipes" / f"{name_or_path}.json").read_text()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Recipe {name_or_path!r} is neither a packaged recipe {RECIPES} nor a file")
        text = path.read_text()
    return Recipe.from_dict(json.loads(text))


# -- per-step operators ---------------------------------------------------------------
def reference_projector(keep):
    """Average reference over the kept channels, zero elsewhere: ``(n, n)``."""
    w = keep.to(torch.float32)
    return torch.diag(w) - torch.outer(w, w) / w.sum()


def whitener(C, P, rtol=1e-6):
    """``(P C P)^{+1/2}`` (range orthogonal to the reference and the dropped channels)."""
    P64 = P.double()
    evals, evecs = torch.linalg.eigh(P64 @ C.double() @ P64)  # float32 may not converge
    keep = evals > rtol * evals.max()
    inv = torch.where(keep, evals.clamp_min(1e-30).rsqrt(), torch.zeros_like(evals))
    return ((evecs * inv) @ evecs.T).to(C.dtype)


def step_operator(bank, gen, optim):
    """Sensor transform and leadfield of one step: channel subset and whitening.

    Returns
    -------
    keep : Tensor of bool, shape (n_channels,)
    T : Tensor, shape (n_channels, n_channels)
        Applied to the clean topographies (reference, then whitening).
    L : Tensor, shape (n_channels, n_sources)
        ``T`` applied to the bank's leadfield.
    """
    n, dev = bank.L.shape[0], bank.device
    keep = torch.ones(n, dtype=torch.bool, device=dev)
    if torch.rand((), generator=gen, device=dev) < optim.subset_prob:
        lo, hi = optim.subset_fraction
        k = max(8, int(round(n * (lo + (hi - lo) * float(torch.rand((), generator=gen,
                                                                        device=dev))))))
        keep = torch.zeros(n, dtype=torch.bool, device=dev)
        keep[torch.randperm(n, generator=gen, device=dev)[:k]] = True
    T = reference_projector(keep)
    if torch.rand((), generator=gen, device=dev) < optim.whiten_prob:
        share = float(torch.rand((), generator=gen, device=dev))
        brain = bank.background_factor @ bank.background_factor.T
        C = (1 - share) * torch.eye(n, device=dev) + share * brain * n / brain.trace()
        T = whitener(C, T)
    return keep, T, T @ bank.L


# -- validation -----------------------------------------------------------------------
def validation_set(fwd, n):
    """SEREEGA-style windows for the learning curve (seed 7)."""
    return SimulatedDataset(fwd, "sereega", n_samples=n, seed=7, snr_db=5.0, verbose=False)


@torch.no_grad()
def validate_start(network, val, device):
    """Mean LE (mm), AUC (%) and PSNR (dB) of the start alone on ``val``."""
    L = torch.as_tensor(val.L, device=device)
    per_sample = []
    geo = val.geometry
    for first in range(0, len(val), 16):
        items = [val[i] for i in range(first, min(first + 16, len(val)))]
        Y = torch.as_tensor(np.stack([it["Y"] for it in items]), device=device)
        Yn, Ln = normalise_problem(Y, L)
        X0 = amortized_start(Yn, Ln, network).cpu().numpy()
        per_sample += [compute_metrics(it["X"], x, it["seeds"], it["patches"], geo.pos,
                                       geo.adjacency, val.sfreq) for it, x in zip(items, X0)]
    summary = summarize_metrics(per_sample)
    return {k: float(summary[k]["mean"]) for k in ("LE", "AUC", "PSNR")}


# -- training -------------------------------------------------------------------------
def progress(state, optim):
    """Share of the schedule done: of ``optim.n_steps``, or of ``optim.minutes``."""
    if optim.minutes is None:
        return state["step"] / optim.n_steps
    return state["minutes"] / optim.minutes


def lr_factor(state, optim):
    """Linear warm-up over the first 2 % of the schedule, then cosine decay to 0.

    Parameters
    ----------
    state : dict
        ``step`` (steps done) and ``minutes`` (training minutes so far).
    optim : Optimisation

    Returns
    -------
    factor : float
        The learning rate of the next step is ``optim.lr * factor``.
    """
    if optim.minutes is None:
        step, n = state["step"], optim.n_steps
        warm = min(1.0, (step + 1) / max(1, n // 50))
    else:
        warm = min(1.0, max(50 * progress(state, optim), 1e-3))
    return warm * 0.5 * (1 + np.cos(np.pi * min(1.0, progress(state, optim))))


def _save(out, net, opt, state, gen):
    tmp = out / (CKPT + ".tmp")
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state,
                "gen": gen.get_state()}, tmp)
    os.replace(tmp, out / CKPT)


def _append_history(out, row):
    path = out / HISTORY
    new = not path.exists()
    with open(path, "a", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def patch_zones(bank, which, amplitude):
    """Seeds and metric search zones of sampled mixtures (for :func:`peak_loss`).

    Parameters
    ----------
    bank : PatchBank
    which, amplitude : Tensor, shape (n, k)
        From :meth:`PatchBank.sample` with ``return_patches=True``.

    Returns
    -------
    seeds : Tensor of int64, shape (n, k)
    zones : Tensor of bool, shape (n, k, n_sources)
        Sources within :data:`~mne_learned_mm.evaluation.metrics.ZONE_ORDER`
        rings of each seed, minus the other patches' sources and the seed.
    active : Tensor of bool, shape (n, k)
    """
    n, k = which.shape
    seeds = bank._seed_t[which]
    active = amplitude != 0
    support = (bank.sources(which.reshape(-1, 1), active.reshape(-1, 1).float()) != 0
               ).reshape(n, k, -1)  # (n, k, s)
    others = support.sum(1, keepdim=True, dtype=torch.uint8) > support  # other patches'
    zones = (bank.hops[seeds] <= ZONE_ORDER) & ~others
    zones.scatter_(2, seeds[..., None], False)
    return seeds, zones, active


def _step_loss(net, bank, gen, recipe, T, K, device):
    optim = recipe.optim
    y, x, which, amp = bank.sample(gen, optim.batch_size, recipe.bank, transform=T,
                                   return_patches=True)
    z = y.to(device) @ K.T.to(device)  # the source image, in float32
    low = optim.matmul_dtype == "bfloat16"
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=low):
        x_hat = net(z)
    x_hat = x_hat.float()
    loss = start_loss(x.to(device), x_hat, optim.background_weight)
    if optim.peak_weight > 0:
        seeds, zones, active = patch_zones(bank, which, amp)
        loss = loss + optim.peak_weight * peak_loss(x_hat, seeds.to(device), zones.to(device),
                                                    active.to(device))
    return loss


def train_start(recipe, fwd, out, *, device="cpu", max_minutes=None):
    """Fit the start network (resumes from ``out`` when a checkpoint is there).

    Parameters
    ----------
    recipe : Recipe
    fwd : mne.Forward
        Fixed-orientation surface forward (the bank's).
    out : path-like
    device : str | torch.device
    max_minutes : float | None
        Stop this run after so many minutes (the step count is kept; run
        again to continue).

    Returns
    -------
    network : StartNetwork
    state : dict
        ``step``, ``seen`` and ``minutes`` (training time over all runs).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    bank = PatchBank.from_forward(fwd, orders=recipe.orders, profiles=recipe.profiles)
    bank.to(device)  # topographies drawn where the network trains
    logger.info(f"{bank}")
    val = validation_set(fwd, recipe.val_samples)
    net = StartNetwork(bank.n_sources, recipe.start).to(device)
    cycles = recipe.optim.cycles()
    state = {"step": 0, "seen": 0, "minutes": 0.0}
    opt, gen = _optimiser(net, cycles[0], device)
    if (out / CKPT).exists():
        ck = torch.load(out / CKPT, map_location=device, weights_only=False)  # our own file
        net.load_state_dict(ck["net"])
        state = ck["state"]
        opt, gen = _optimiser(net, cycles[_cycle(state)["cycle"]], device)
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        logger.info(f"Resuming at step {state['step']} ({state['minutes']:.1f} min)")
    state.update(_cycle(state), device=str(device))
    t_run = time.perf_counter()
    t_ckpt = t_eval = t_run
    clock = (t_run, state["minutes"], state["cycle_minutes"])
    bar = ProgressBar(1000, mesg="start network")  # in thousandths of the schedule
    while not finished(state, recipe.optim):
        optim = cycles[state["cycle"]]
        if progress(_cycle_view(state), optim) >= 1:  # a warm restart from these weights
            state.update(cycle=state["cycle"] + 1, cycle_step=0, cycle_minutes=0.0)
            opt, gen = _optimiser(net, cycles[state["cycle"]], device)
            clock = (time.perf_counter(), state["minutes"], 0.0)
            logger.info(f"Warm restart: cycle {state['cycle']} at step {state['step']}")
            continue
        _, T, L = step_operator(bank, gen, optim)
        K = tikhonov_operator(L, recipe.start.reg, "sloreta")
        loss = _step_loss(net, bank, gen, recipe, T, K, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = optim.lr * lr_factor(_cycle_view(state), optim)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        now = time.perf_counter()
        elapsed = (now - clock[0]) / 60
        state.update(step=state["step"] + 1, seen=state["seen"] + optim.batch_size,
                     minutes=clock[1] + elapsed, cycle_step=state["cycle_step"] + 1,
                     cycle_minutes=clock[2] + elapsed)
        done = progress(_cycle_view(state), optim)
        bar.update(min(1000, int(1000 * (state["cycle"] + min(done, 1)) / len(cycles))))
        last = done >= 1  # the end of a cycle
        over = max_minutes is not None and (now - t_run) / 60 >= max_minutes
        if last or over or now - t_eval >= 60 * recipe.eval_minutes:
            net.eval()
            metrics = validate_start(net, val, device)
            net.train()
            _append_history(out, {**{k: state[k] for k in ("step", "seen", "minutes")},
                                  "loss": loss.item(), "lr": lr, **metrics})
            logger.info(f"step {state['step']}: loss {loss.item():.4f}, val {metrics}")
            t_eval = time.perf_counter()
        if last or over or now - t_ckpt >= 60 * recipe.checkpoint_minutes:
            _save(out, net, opt, state, gen)
            t_ckpt = time.perf_counter()
        if over:
            break
    return net.eval(), state


def finished(state, optim):
    """Whether a member's training ``state`` has done every cycle of ``optim``."""
    cycles = optim.cycles()
    c = _cycle(state)
    return c["cycle"] == len(cycles) - 1 and progress(_cycle_view(c), cycles[-1]) >= 1


def _cycle(state):
    """The cycle counters of ``state`` (checkpoints from before restarts: cycle 0)."""
    return {"cycle": state.get("cycle", 0), "cycle_step": state.get("cycle_step", state["step"]),
            "cycle_minutes": state.get("cycle_minutes", state["minutes"])}


def _cycle_view(state):
    """Steps and minutes within the current cycle, for :func:`progress` and :func:`lr_factor`."""
    return {"step": state["cycle_step"], "minutes": state["cycle_minutes"]}


def _optimiser(net, optim, device):
    """A fresh AdamW and the draws' generator of one cycle.

    AdamW's fused kernel where this torch has one for the device (on CPU
    since torch 2.4: 2.4 ms instead of 16 per step of the shipped network),
    else its default implementation (the same update).
    """
    params = list(net.parameters())
    try:
        opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay,
                                fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device
        opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return opt, torch.Generator(device=device).manual_seed(optim.seed)


def build_model(recipe, network, state, fwd, out, device_name, mm_dir=None):
    """Write the shipped model: start network + MM refinement, and its config.

    The MM refinement (Φ, curvature net, solver settings) is the one the
    recipe's last ``mm`` stage trained (the model in ``mm_dir``); without
    one, the model is the start alone (``n_iter=0``) with an untrained MM
    module of the stages' solver shape (what the first stage starts from).

    Parameters
    ----------
    recipe : Recipe
    network : StartNetwork
    state : dict
        From :func:`train_start` (summed over the members).
    fwd : mne.Forward
    out : path-like
    device_name : str
        Where it trained (recorded).
    mm_dir : path-like | None
        The last MM stage's output directory.
    """
    from ..pretrained import build_solver

    src = fwd["src"]
    if mm_dir is not None:
        weights, config = load_state(mm_dir)
        n_iter = recipe.n_iter
    else:
        solver = {"prior_odd": True, "net_even": True, **recipe.mm_solver, "n_iter": 0}
        config = {"kind": "mm", "solver": solver, "n_sources": int(fwd["nsource"]),
                  "sfreq": float(SereegaConfig().sfreq)}
        weights = build_solver("mm", solver, config["n_sources"]).state_dict()
        n_iter = 0
    weights = {k: v for k, v in weights.items() if not k.startswith("start.")}
    # the start networks in float16 (half the file; cast back to float32 on loading)
    weights.update({f"start.{k}": v.half() for k, v in network.state_dict().items()})
    config = dict(config)
    trained = {"device": device_name, "minutes": round(state["minutes"], 1),
               "steps": state["step"], "topographies": state["seen"],
               "members": network.config.members}
    if mm_dir is not None:
        trained["mm"] = mm_progress(recipe, Path(out))
    config.update(
        init="amortized", start=dataclasses.asdict(network.config),
        solver={**config["solver"], "n_iter": n_iter}, n_sources=int(fwd["nsource"]),
        subject=src._subject, vertices=[s["vertno"].tolist() for s in src],
        ch_names=list(fwd["info"]["ch_names"]), code_version=__version__,
        recipe=recipe.to_dict(), trained=trained)
    config.pop("train", None)
    config.pop("notes", None)
    save_model(out, weights, config)


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m mne_learned_mm.training.start",
        description="Train the amortized start network of a recipe and write the model "
                    "(weights.pt, config.json). Run again with the same --out to resume.")
    p.add_argument("recipe", help=f"packaged recipe {RECIPES} or a recipe JSON file")
    p.add_argument("--out", required=True, help="output directory (checkpoints, model)")
    p.add_argument("--fwd", default=None,
                   help="forward .fif (default: the packaged fsaverage ico3 forward)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop this run after so many minutes (resume later)")
    p.add_argument("--n-threads", type=int, default=None,
                   help="torch threads of each member's process (members left over "
                        "when the others are done, and the MM stages after them, use "
                        "the idle processes' threads too)")
    p.add_argument("--n-jobs", type=int, default=1,
                   help="ensemble members trained at once, one process each")
    p.add_argument("--export", action="store_true",
                   help="write the model from the latest checkpoint without training "
                        "(to evaluate a run in progress)")
    return p


def member_dirs(recipe, out):
    """Where each member of the recipe trains: ``out``, or ``out/member{k}``."""
    out = Path(out)
    n = len(recipe.members)
    return [out] if n == 1 else [out / f"member{k}" for k in range(n)]


def _train_member(recipe, k, fwd_fname, out, device, max_minutes, n_threads):
    """Train member ``k`` (in this process or a worker); its state."""
    if n_threads:
        torch.set_num_threads(n_threads)
    _, state = train_start(recipe.member(k), read_forward(fwd_fname), out, device=device,
                           max_minutes=max_minutes)
    return state


def train_members(recipe, fwd_fname, out, *, device="cpu", max_minutes=None, n_jobs=1,
                  n_threads=None):
    """Train every member of the recipe, ``n_jobs`` at a time (processes).

    Parameters
    ----------
    recipe : Recipe
    fwd_fname : path-like | None
        Forward ``.fif`` (``None``: the packaged fsaverage ico3 forward); each
        process reads it.
    out : path-like
        Output directory (:func:`member_dirs`).
    device : str | torch.device
    max_minutes : float | None
        Per member, as in :func:`train_start`.
    n_jobs : int
        Members trained at once, one process each.
    n_threads : int | None
        Torch threads of each process; the members of a last, incomplete
        round share the idle processes' threads (:func:`member_threads`).

    Returns
    -------
    done : bool
        Whether every member reached its last step.
    """
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1, got {n_jobs}")
    dirs = member_dirs(recipe, out)
    threads = member_threads(len(dirs), n_jobs, n_threads)
    jobs = [(recipe, k, fwd_fname, d, device, max_minutes, t)
            for k, (d, t) in enumerate(zip(dirs, threads))]
    if n_jobs == 1 or len(jobs) == 1:
        states = [_train_member(*job) for job in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            states = list(pool.map(_train_member, *zip(*jobs)))
    return all(finished(state, recipe.member(k).optim) for k, state in enumerate(states))


def member_threads(n_members, n_jobs, n_threads):
    """Torch threads of each member's process.

    Members train ``n_jobs`` at a time in the order of the recipe, so when
    ``n_members`` is not a multiple of ``n_jobs`` the last ones train while
    the other processes' cores are idle: they share those cores' threads
    (three members on two cores: the third trains alone with both).

    Parameters
    ----------
    n_members : int
    n_jobs : int
        Members trained at once.
    n_threads : int | None
        Threads of each process (``None``: torch's default for all).

    Returns
    -------
    threads : list of int | None
        One per member.
    """
    if n_threads is None:
        return [None] * n_members
    last = n_members % n_jobs  # members of the last, incomplete round
    full = n_members - last
    return [n_threads if k < full else n_threads * n_jobs // last
            for k in range(n_members)]


def mm_dirs(recipe, out):
    """Where each MM stage of the recipe trains: ``out/mm{k}``."""
    return [Path(out) / f"mm{k}" for k in range(len(recipe.mm))]


def mm_progress(recipe, out):
    """Each MM stage's stage, steps, minutes, device and whether it finished.

    Returns
    -------
    progress : list of dict
        One per stage that has a checkpoint, in order.
    """
    rows = []
    for k, d in enumerate(mm_dirs(recipe, out)):
        if not (d / MM_CKPT).is_file():
            break
        state = torch.load(d / MM_CKPT, map_location="cpu", weights_only=False)["state"]
        cfg = json.loads((d / "train_config.json").read_text())
        rows.append({"stage": cfg["stage"], "steps": state["step"],
                     "minutes": round(state["elapsed"] / 60, 1), "device": cfg["device"],
                     "done": state["epoch"] >= cfg["epochs"]})
    return rows


def train_mm(recipe, fwd_fname, out, *, device="cpu", max_minutes=None):
    """Train the recipe's MM stages in order, for the start-only model ``out/start``.

    Each stage resumes from its checkpoint when it has one (a finished stage
    is not trained again) and starts from the previous stage's model.

    Parameters
    ----------
    recipe : Recipe
    fwd_fname : path-like | None
    out : path-like
    device : str | torch.device
    max_minutes : float | None
        Per stage, its ``time_budget_min``.

    Returns
    -------
    done : bool
        Whether every stage finished.
    """
    previous = Path(out) / "start"
    for k, d in enumerate(mm_dirs(recipe, out)):
        cfg = recipe.mm_config(k, previous, d, fwd_fname, device)
        if max_minutes is not None:
            cfg = dataclasses.replace(cfg, time_budget_min=max_minutes)
        train(cfg, resume=(d / MM_CKPT).is_file())
        if not mm_progress(recipe, out)[k]["done"]:
            return False
        previous = d
    return True


def export_checkpoint(recipe, fwd, out, *, start_only=False):
    """Write the model of the latest checkpoints (see :func:`build_model`).

    The members' training minutes, steps and topographies are summed; the
    devices they trained on are recorded. The MM refinement is the last MM
    stage's that wrote a model.

    Parameters
    ----------
    recipe : Recipe
    fwd : mne.Forward
    out : path-like
    start_only : bool
        Write the start alone to ``out/start`` (what the MM stages start from).
    """
    out = Path(out)
    network = StartNetwork(fwd["nsource"], recipe.start)
    total = {"step": 0, "seen": 0, "minutes": 0.0}
    devices = set()
    for k, d in enumerate(member_dirs(recipe, out)):
        if not (d / CKPT).exists():
            raise FileNotFoundError(f"No {CKPT} in {d}: nothing to export")
        ck = torch.load(d / CKPT, map_location="cpu", weights_only=False)  # our own file
        one = StartNetwork(fwd["nsource"], recipe.member(k).start)
        one.load_state_dict(ck["net"])
        network.nets[k].load_state_dict(one.nets[0].state_dict())
        total = {key: total[key] + ck["state"][key] for key in total}
        devices.add(ck["state"].get("device", "unknown"))
    written = [d for d in mm_dirs(recipe, out) if (d / "weights.pt").is_file()]
    mm_dir = None if start_only or not written else written[-1]
    build_model(recipe, network.eval(), total, fwd, out / "start" if start_only else out,
                ", ".join(sorted(devices)), mm_dir=mm_dir)


def main(argv=None):
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    recipe = load_recipe(args.recipe)
    if args.n_threads:
        torch.set_num_threads(args.n_threads)
    device = check_device(args.device)
    fwd = read_forward(args.fwd)
    if args.export:
        export_checkpoint(recipe, fwd, Path(args.out))
        return
    done = train_members(recipe, args.fwd, args.out, device=device,
                         max_minutes=args.max_minutes, n_jobs=args.n_jobs,
                         n_threads=args.n_threads)
    if done and recipe.mm:
        if args.n_threads:  # the members' processes are done: the stages use all their threads
            torch.set_num_threads(args.n_threads * args.n_jobs)
        export_checkpoint(recipe, fwd, args.out, start_only=True)
        done = train_mm(recipe, args.fwd, args.out, device=device,
                        max_minutes=args.max_minutes)
    if done:
        export_checkpoint(recipe, fwd, args.out)
        logger.info(f"Model written to {args.out}")
    else:
        logger.info(f"Stopped before the last step; run again to resume ({args.out})")


if __name__ == "__main__":
    main()
