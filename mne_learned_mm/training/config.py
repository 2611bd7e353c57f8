"""Training configuration."""

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field

from ..solver.mm import split_solver_config

#: fields that hold a number or an interval (a tuple; JSON lists on disk and on the CLI)
RANGE_FIELDS = ("snr_db",)

#: fields with a fixed set of values
CHOICES = {
    "data": ("sereega", "nmm", "evoked", "mix", "sereega+evoked"),
    "model": ("mm", "4dvarnet"),
    "init": ("random", "tikhonov", "prior", "amortized"),
    "stage": ("bilevel", "prior"),
}

#: help of the fields that carry no ``#:`` comment in :class:`TrainConfig`
_HELP = {
    "n_train": "number of simulated training samples per epoch",
    "n_val": "number of validation samples (5 dB, the benchmark protocol)",
    "snr_db": "training SNR in dB, a number or an interval [lo, hi] drawn per sample",
    "seed": "seed of the simulated data and of the initialisation",
    "init_reg": "regularisation of the linear start (1/SNR^2)",
    "epochs": "number of epochs (raise it on --resume to train longer: the learning-rate "
              "schedule is stretched to the new total)",
    "batch_size": "samples per step (per process under torchrun)",
    "lr": "Adam learning rate",
    "grad_clip": "clip of the gradient norm (0: none)",
    "device": 'where to train: "auto", "cpu", "cuda" or "cuda:<index>"',
    "num_threads": "torch CPU threads (default: torch's)",
    "checkpoint_min": "minutes between checkpoints within an epoch",
    "out": "output directory (model, checkpoint, history, train_config.json)",
}


def field_help():
    """One line of help per :class:`TrainConfig` field (its ``#:`` comment).

    Returns
    -------
    help : dict of str -> str
    """
    lines = inspect.getsource(TrainConfig).splitlines()
    out, pending = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"(\w+): [^=]+=.*?(?:#:\s*(.*))?$", stripped)
        if m and not stripped.startswith(("def ", "return", "@")):
            text = " ".join(pending + ([m.group(2)] if m.group(2) else []))
            out[m.group(1)] = text or _HELP.get(m.group(1), "")
        pending = [] if not stripped.startswith("#:") else pending
    for name, text in _HELP.items():
        out[name] = out.get(name) or text
    return out


@dataclass
class TrainConfig:
    """Data, start, optimisation and infrastructure of a bilevel training run (Alg. 2).

    The solver's own settings are ``solver``, flat (see
    :func:`~mne_learned_mm.solver.mm.split_solver_config`: the MM
    iteration, Φ as ``prior_*``, the curvature net as ``net_*``). Saved as
    JSON beside the weights together with the forward's channel names,
    source vertices and sampling rate.
    """

    # data
    data: str = "sereega"  #: "sereega" | "nmm" | "evoked" | "mix" | "sereega+evoked"
    fwd: str | None = None  #: -fwd.fif path; None = default fsaverage ico3 forward
    n_train: int = 8000
    n_val: int = 64
    snr_db: tuple = (0.0, 15.0)
    seed: int = 0
    random_sign: bool = False  #: draw each SEREEGA/NMM patch's polarity at random
    # solver / model
    model: str = "mm"  #: "mm" (learned MM) | "4dvarnet" (unrolled baseline)
    #: flat solver settings: MM iteration, prior_* (Φ), net_* (curvature net)
    solver: dict = field(default_factory=dict)
    #: "random" (paper) | "tikhonov" | "prior" (Φ(K Y) warm start) | "amortized" (the
    #: start network of ``init_from``, frozen)
    init: str = "tikhonov"
    init_reg: float = 1.0 / 9.0
    # optimisation
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    lr_min: float = 1e-5  #: cosine schedule floor
    grad_clip: float = 1.0
    stage: str = "bilevel"  #: "bilevel" (Alg. 2) | "prior" (Φ alone, denoising AE)
    #: model dir whose weights start this run (same solver shape)
    init_from: str | None = None
    #: stop (and save) after this many minutes of this run (a --resume gets its own budget)
    time_budget_min: float | None = None
    # infrastructure
    device: str = "auto"
    num_threads: int | None = None
    checkpoint_min: float = 3.0
    out: str = "model_out"

    def check(self):
        """Refuse values that cannot run, before anything is written.

        Returns
        -------
        self : TrainConfig
        """
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {value!r}")
        for name in ("n_train", "n_val", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train ({self.n_train}) must be at least batch_size "
                             f"({self.batch_size})")
        if self.time_budget_min is not None and self.time_budget_min < 0:
            raise ValueError(f"time_budget_min must be >= 0, got {self.time_budget_min}")
        if self.init == "amortized" and not self.init_from:
            raise ValueError('init="amortized" needs init_from: a model with a start network '
                             '(e.g. "default"), whose network starts every solve')
        if not isinstance(self.solver, dict):
            raise ValueError(f"solver must be a JSON object, got {self.solver!r}")
        split_solver_config(self.solver)  # unknown settings are refused here
        return self

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {sorted(unknown)}")
        d = dict(d)
        for key in RANGE_FIELDS:
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)
