"""Bilevel training (Alg. 2 of the paper) with checkpoints, resume and DDP."""

import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from mne.utils import ProgressBar, logger

from .. import __version__
from .._config import check_device
from .._forward import read_forward
from ..evaluation.metrics import compute_metrics, summarize_metrics
from ..pretrained import build_solver, save_model
from ..simulation import SereegaConfig, SimulatedDataset, collate, default_config
from ..solver.init import initial_point, normalise_problem, tikhonov_operator, unit_frobenius
from ..solver.objective import cosine_similarity, upper_loss

CKPT = "checkpoint.pt"


# -- distributed helpers -------------------------------------------------------
def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def _init_distributed(device):
    world, rank = _dist_info()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return world, rank


# -- data ------------------------------------------------------------------------
def _load_forward(cfg):
    return read_forward(cfg.fwd)


#: Training mixtures: name -> simulation kinds; batches alternate between kinds.
MIXTURES = {"mix": ("sereega", "nmm"), "sereega+evoked": ("sereega", "evoked")}


def _simulation_config(kind, sfreq, random_sign=False):
    """Simulation config of ``kind``: evoked windows at the model's rate (their
    components always have random polarities); SEREEGA / NMM patches with
    random polarities if ``random_sign``."""
    changes = {"random_sign": True} if random_sign else {}
    if kind == "evoked":  # 500 ms windows (100 ms baseline) at the SEREEGA rate
        changes.update(sfreq=sfreq, n_times=int(round(0.5 * sfreq)))
    return default_config(kind, **changes) if changes else None


def _datasets(cfg, fwd):
    kinds = list(MIXTURES.get(cfg.data, [cfg.data]))
    sfreq = SereegaConfig().sfreq
    train = [SimulatedDataset(fwd, kind=k, n_samples=cfg.n_train, seed=cfg.seed, start=0,
                              snr_db=cfg.snr_db,
                              config=_simulation_config(k, sfreq, cfg.random_sign))
             for k in kinds]
    val = SimulatedDataset(fwd, kind=kinds[0], n_samples=cfg.n_val, seed=cfg.seed + 10_000,
                           start=0, snr_db=5.0)
    return train, val


def _batch(datasets, indices, which=0):
    """Stack samples of ``datasets[which % len(datasets)]``: Y (unit Frobenius norm per
    sample) and X, float32."""
    dataset = datasets[which % len(datasets)]
    return _stack([dataset[int(i)] for i in indices])


def _stack(items):
    batch = collate(items)
    return unit_frobenius(batch["Y"]), batch["X"]


def _to(device, *tensors):
    return tuple(t.to(device) for t in tensors)


# -- model -------------------------------------------------------------------------
def model_config(cfg, fwd, n_sources):
    """Everything needed to rebuild the model and to refuse incompatible use."""
    src = fwd["src"]
    return {
        "kind": cfg.model,
        "solver": dict(cfg.solver),
        "init": cfg.init,
        "init_reg": cfg.init_reg,
        "n_sources": int(n_sources),
        "subject": src._subject,
        "vertices": [s["vertno"].tolist() for s in src],
        "ch_names": list(fwd["info"]["ch_names"]),
        "sfreq": float(_data_sfreq(cfg)),
        "train": dataclasses.asdict(cfg),
        "code_version": __version__,
    }


def _data_sfreq(cfg):
    if cfg.data in ("sereega", *MIXTURES):
        return SereegaConfig().sfreq
    return default_config(cfg.data).sfreq


def _X0(cfg, Y, L, K, step, prior, start=None):
    """Start of the solve, as :class:`~mne_learned_mm.pretrained.SolverPipeline` starts
    it; the prior stage denoises the Tikhonov start (or the amortized one), the random
    start changes per step. ``start``: the frozen start network and its sLORETA operator
    (``init="amortized"``)."""
    if cfg.init == "amortized":
        network, K_start = start
        return initial_point(Y, L, "amortized", K=K_start, network=network)
    kind = "tikhonov" if cfg.stage == "prior" and cfg.init != "random" else cfg.init
    return initial_point(Y, L, kind, K=K, reg=cfg.init_reg, seed=step, prior=prior)


def _load_start(init_from, L):
    """The frozen start network of a trained model and its sLORETA operator of ``L``."""
    from ..pretrained import _build_start, load_state

    state, config = load_state(init_from)
    if config.get("init") != "amortized":
        raise ValueError(f'init="amortized" needs a model with a start network; '
                         f'{init_from!r} starts with init={config.get("init")!r}')
    network = _build_start(config, state).to(L.device)
    network.eval().requires_grad_(False)
    return (network, tikhonov_operator(L, network.config.reg, "sloreta")), config["start"]


def _load_init(module, init_from):
    """Start from a trained model's weights (same shapes; absent keys keep their
    initial values)."""
    from ..pretrained import load_state

    keys = module.load_state_dict(load_state(init_from)[0], strict=False)
    logger.info(f"Initialised from {init_from} (missing: {keys.missing_keys or 'none'}, "
                f"unexpected: {keys.unexpected_keys or 'none'})")


# -- checkpoints --------------------------------------------------------------------
def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _save_checkpoint(out, module, opt, sched, state):
    tmp = out / (CKPT + ".tmp")
    torch.save({"model": module.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "state": state, "rng": _rng_state()}, tmp)
    os.replace(tmp, out / CKPT)


def _load_checkpoint(out, module, opt, sched):
    # the checkpoint is our own file (optimizer state holds python scalars)
    ck = torch.load(out / CKPT, map_location="cpu", weights_only=False)
    try:
        module.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"The checkpoint in {out} was written by a model of another shape than this "
            f"configuration builds ({str(exc).splitlines()[1].strip()[:160]}...). Resume with "
            f"the run's own configuration ({out / 'train_config.json'}: the CLI reads it "
            "with --resume) or start a new run in another --out.") from None
    opt.load_state_dict(ck["opt"])
    T_max = sched.T_max  # this run's schedule (a larger --epochs stretches it)
    sched.load_state_dict(ck["sched"])
    _stretch_schedule(sched, T_max)
    torch.set_rng_state(ck["rng"]["torch"])
    np.random.set_state(ck["rng"]["numpy"])
    random.setstate(ck["rng"]["python"])
    return ck["state"]


def _stretch_schedule(sched, T_max):
    """Continue a cosine schedule over ``T_max`` steps in all: the learning rate at the
    current step is put on the closed-form curve of the new length, so a resumed run
    with more epochs keeps decaying instead of restarting the cosine's next cycle."""
    if sched.T_max == T_max:
        return
    step = sched.last_epoch
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
        group["lr"] = sched.eta_min + (base - sched.eta_min) * (
            1 + math.cos(math.pi * min(step, T_max) / T_max)) / 2
    sched.T_max = T_max
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


# -- validation ----------------------------------------------------------------------
@torch.no_grad()
def validate(module, cfg, val, L, K, device, start=None):
    """Mean upper-level loss and benchmark metrics on the validation set.

    In the ``"prior"`` stage the estimate is ``Φ(X0)``; ``start`` as in :func:`_X0`.
    """
    per_sample, losses = [], []
    geo = val.geometry
    for first in range(0, len(val), 16):
        items = [val[i] for i in range(first, min(first + 16, len(val)))]
        Y, X = _to(device, *_stack(items))
        X0 = _X0(cfg, Y, L, K, 0, module.prior, start)
        if cfg.stage == "prior":
            X_hat = module.prior(X0)
        else:
            X_hat, _ = module(Y, L, X0=X0)
        losses.append(float(upper_loss(X, X_hat, module.prior)))
        for j, item in enumerate(items):
            per_sample.append(compute_metrics(item["X"], X_hat[j].cpu().numpy(),
                                              item["seeds"], item["patches"], geo.pos,
                                              geo.adjacency, val.sfreq))
    summary = summarize_metrics(per_sample)
    out = {"val_loss": float(np.mean(losses))}
    out.update({k: float(v["mean"]) for k, v in summary.items()})
    return out


# -- Φ stage -------------------------------------------------------------------------
def prior_loss(prior, X, X0):
    """Denoising-autoencoder loss ``(1 − cos(X, Φ(X0))) + (1 − cos(X, Φ(X)))``.

    Parameters
    ----------
    prior : callable
        Autoencoder Φ.
    X, X0 : Tensor, shape (n_batch, n_sources, n_times)
        True sources and the start ``X0`` that Φ denoises.

    Returns
    -------
    loss : Tensor, shape ()
        Mean over the batch.
    """
    loss = (1 - cosine_similarity(X, prior(X0))) + (1 - cosine_similarity(X, prior(X)))
    return loss.mean()


# -- main loop -------------------------------------------------------------------------
def train(cfg, *, resume=False, verbose=None):
    """Run bilevel training; returns the output directory.

    Parameters
    ----------
    cfg : TrainConfig
    resume : bool
        Continue exactly from ``out/checkpoint.pt`` (model, optimizer,
        scheduler, RNG, epoch and step).

    Returns
    -------
    out : pathlib.Path
    """
    out = _check_run(cfg, resume)  # before anything is written
    device, world, rank = _start_process(cfg)
    fwd = _load_forward(cfg)
    out.mkdir(parents=True, exist_ok=True)
    train_sets, val = _datasets(cfg, fwd)
    run = _Run(cfg, out, device, world, rank, train_sets, val,
               *_operators(cfg, train_sets[0], device))
    _build(run)
    mconf = model_config(cfg, fwd, run.L.shape[1])
    if run.start is not None:
        mconf["start"] = run.start_config
    _start_state(run, resume)
    if rank == 0:
        (out / "train_config.json").write_text(cfg.to_json())
    clock = _Clock(run.state["elapsed"])
    stop = False
    while run.state["epoch"] < cfg.epochs and not stop:
        epoch = run.state["epoch"]
        losses, stop = _train_epoch(run, clock)
        if not stop:
            run.state["epoch"] += 1
        if rank == 0:
            _end_epoch(run, epoch, losses, mconf)
            clock.last_ckpt = time.time()
    _finish_distributed(run)
    return out


@dataclasses.dataclass
class _Run:
    """What the steps of :func:`train` share: setup, data, model and progress."""

    cfg: object
    out: Path
    device: torch.device
    world: int
    rank: int
    train_sets: list
    val: SimulatedDataset
    L: torch.Tensor  # normalised leadfield on the device
    K: torch.Tensor  # Tikhonov operator of L
    start: tuple = None  # frozen start network and its operator (init="amortized")
    start_config: dict = None
    module: torch.nn.Module = None
    net: torch.nn.Module = None  # module, or its DDP wrapper
    opt: torch.optim.Optimizer = None
    sched: torch.optim.lr_scheduler.LRScheduler = None
    steps_per_epoch: int = 0
    state: dict = None  # epoch, step, elapsed, history (what a checkpoint resumes)


class _Clock:
    """Elapsed time over resumed runs, this run's time budget, the last checkpoint."""

    def __init__(self, elapsed):
        self.t_start = time.time() - elapsed
        self.t_run = time.time()  # the time budget is of this run, not of the earlier ones
        self.last_ckpt = time.time()

    def elapsed(self):
        return time.time() - self.t_start

    def over_budget(self, minutes):
        return minutes is not None and time.time() - self.t_run > 60 * minutes

    def checkpoint_due(self, minutes):
        return time.time() - self.last_ckpt > 60 * minutes


def _check_run(cfg, resume):
    """Refuse a configuration that cannot run; the output directory."""
    cfg.check()
    out = Path(cfg.out)
    if resume and not (out / CKPT).is_file():
        raise FileNotFoundError(
            f"resume=True but there is no checkpoint to resume in {out} ({CKPT}); "
            "start without resume")
    return out


def _start_process(cfg):
    """Threads, device, process group and seeds of this process."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = check_device(cfg.device, rank=_dist_info()[1])
    world, rank = _init_distributed(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return device, world, rank


def _operators(cfg, dataset, device):
    """Normalised leadfield ``L`` of the data and its Tikhonov operator ``K``."""
    L = normalise_problem(torch.zeros(1, 1, 1), torch.as_tensor(dataset.L))[1].to(device)
    return L, tikhonov_operator(L, cfg.init_reg)


def _build(run):
    """Model (with ``init_from`` weights), its DDP wrapper, optimizer and schedule."""
    cfg = run.cfg
    run.module = build_solver(cfg.model, cfg.solver, run.L.shape[1]).to(run.device)
    if cfg.init_from:
        _load_init(run.module, cfg.init_from)
    if cfg.init == "amortized":
        run.start, run.start_config = _load_start(cfg.init_from, run.L)
    run.net = run.module
    if run.world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(run.module)
    params = run.module.prior.parameters() if cfg.stage == "prior" else run.module.parameters()
    run.opt = torch.optim.Adam(params, lr=cfg.lr)
    run.steps_per_epoch = cfg.n_train // (cfg.batch_size * run.world)
    run.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        run.opt, T_max=max(1, cfg.epochs * run.steps_per_epoch), eta_min=cfg.lr_min)


def _start_state(run, resume):
    """Progress of a resumed run, or of a new one."""
    run.state = {"epoch": 0, "step": 0, "elapsed": 0.0, "history": []}
    if resume:
        run.state = _load_checkpoint(run.out, run.module, run.opt, run.sched)
        logger.info(f"Resuming at epoch {run.state['epoch']} step {run.state['step']}")


def _train_epoch(run, clock):
    """The remaining steps of this epoch (this rank's shard); losses, and whether the
    time budget stopped it."""
    cfg, state = run.cfg, run.state
    epoch = state["epoch"]
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(cfg.n_train)
    shard = perm[run.rank::run.world][: run.steps_per_epoch * cfg.batch_size]
    steps = range(state["step"] - epoch * run.steps_per_epoch, run.steps_per_epoch)
    if run.rank == 0:
        steps = ProgressBar(steps, mesg=f"epoch {epoch}")
    run.module.train()
    losses = []
    for k in steps:
        losses.append(_train_step(run, shard[k * cfg.batch_size:(k + 1) * cfg.batch_size]))
        state["step"] += 1
        state["elapsed"] = clock.elapsed()
        if _agree(clock.over_budget(cfg.time_budget_min), run.world):
            return losses, True
        if run.rank == 0 and clock.checkpoint_due(cfg.checkpoint_min):
            _save_checkpoint(run.out, run.module, run.opt, run.sched, state)
            clock.last_ckpt = time.time()
    return losses, False


def _train_step(run, idx):
    """One optimizer step on the samples ``idx``; the loss."""
    cfg, module, step = run.cfg, run.module, run.state["step"]
    Y, X = _to(run.device, *_batch(run.train_sets, idx, step))
    X0 = _X0(cfg, Y, run.L, run.K, step, module.prior, run.start)
    if cfg.stage == "prior":
        loss = prior_loss(module.prior, X, X0)
    else:
        X_hat, _ = run.net(Y, run.L, X0=X0, create_graph=True)
        loss = upper_loss(X, X_hat, module.prior)
    run.opt.zero_grad()
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
    run.opt.step()
    run.sched.step()
    return loss.item()


def _end_epoch(run, epoch, losses, mconf):
    """Validate, append to the history, checkpoint and write the model (rank 0)."""
    run.module.eval()
    state = run.state
    row = {"epoch": epoch, "step": state["step"], "minutes": state["elapsed"] / 60,
           "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": run.sched.get_last_lr()[0]}
    row.update(validate(run.module, run.cfg, run.val, run.L, run.K, run.device, run.start))
    state["history"].append(row)
    _write_history(run.out, state["history"])
    logger.info("  " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
    _save_checkpoint(run.out, run.module, run.opt, run.sched, state)
    state_dict = run.module.state_dict()
    if run.start is not None:  # the frozen network travels with the model
        state_dict.update({f"start.{k}": v for k, v in run.start[0].state_dict().items()})
    save_model(run.out, state_dict, mconf)


def _finish_distributed(run):
    """With several ranks: record a digest of the weights (replicas must agree), close."""
    if run.world == 1:
        return
    digest = hashlib.sha1(b"".join(v.detach().cpu().numpy().tobytes()
                                   for v in run.module.state_dict().values())).hexdigest()
    (run.out / f"rank{run.rank}-weights.sha1").write_text(digest)
    dist.barrier()
    dist.destroy_process_group()


def _agree(flag, world):
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _write_history(out, history):
    (out / "history.json").write_text(json.dumps(history, indent=1))
    with open(out / "history.csv", "w", newline="") as fid:
        writer = csv.DictWriter(fid, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
