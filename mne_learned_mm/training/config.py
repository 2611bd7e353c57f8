"""Training configuration."""

import dataclasses
import json
from dataclasses import dataclass, field

#: fields that hold a number or an interval (a tuple; JSON lists on disk and on the CLI)
RANGE_FIELDS = ("snr_db", "patch_order", "channel_dropout")


@dataclass
class TrainConfig:
    """All hyper-parameters of a bilevel training run (Alg. 2).

    Saved as JSON beside the weights together with the forward's channel
    names, source vertices and sampling rate.
    """

    # data
    data: str = "sereega"  #: "sereega" | "nmm" | "evoked" | "mix" | "sereega+evoked"
    fwd: str | None = None  #: -fwd.fif path; None = default fsaverage ico3 forward
    n_train: int = 8000
    n_val: int = 64
    snr_db: tuple = (0.0, 15.0)
    seed: int = 0
    random_sign: bool = False  #: draw each SEREEGA/NMM patch's polarity at random
    patch_order: tuple | None = None  #: patch order range of all kinds; None = (1, 5)
    #: channel-drop probability (or interval, drawn per sample); prior stage only
    channel_dropout: float | tuple = 0.0
    # solver / model
    model: str = "mm"  #: "mm" (learned MM) | "4dvarnet" (unrolled baseline)
    solver: dict = field(default_factory=dict)  #: kwargs of the solver config
    init: str = "tikhonov"  #: "random" (paper) | "tikhonov" | "prior" (Φ(K Y) warm start)
    init_reg: float = 1.0 / 9.0
    #: linear image that starts the solve and feeds Φ: "tikhonov" (minimum norm) | "sloreta"
    init_operator: str = "tikhonov"
    # optimisation
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    lr_min: float = 1e-5  #: cosine schedule floor
    grad_clip: float = 1.0
    time_weight: float = 0.0  #: weight of the per-source temporal loss term (0 = paper)
    patch_weight: float = 0.0  #: weight of the per-patch zone loss term (0 = paper)
    pretrain_phi_steps: int = 0  #: denoising-AE steps for Φ before the bilevel stage
    stage: str = "bilevel"  #: "bilevel" (Alg. 2) | "prior" (Φ alone, denoising AE)
    #: model dir whose weights start this run (a narrower Φ is grown to ``prior_hidden``)
    init_from: str | None = None
    time_budget_min: float | None = None  #: stop (and save) after this many minutes
    # infrastructure
    device: str = "auto"
    num_threads: int | None = None
    num_workers: int = 0
    checkpoint_min: float = 3.0
    out: str = "model_out"

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
