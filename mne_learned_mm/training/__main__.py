"""Command line: ``python -m mne_learned_mm.training --data sereega --out model_dir``.

Also runs under ``torchrun --nproc_per_node K -m mne_learned_mm.training ...``
(DistributedDataParallel, gloo on CPU, nccl on GPU).
"""

import argparse
import dataclasses
import json
import sys

import mne

from .config import RANGE_FIELDS, TrainConfig
from .loop import train


def _parser():
    parser = argparse.ArgumentParser(prog="python -m mne_learned_mm.training",
                                     description=__doc__.splitlines()[0])
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, (dict, tuple)) or f.name in RANGE_FIELDS:
            parser.add_argument(flag, type=json.loads, default=default,
                                help=f"JSON (default: {json.dumps(default)})")
        elif isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"),
                                default=default)
        else:
            typ = type(default) if default is not None else str
            if f.name == "time_budget_min":
                typ = float
            if f.name == "num_threads":
                typ = int
            parser.add_argument(flag, type=typ, default=default,
                                help=f"(default: {default})")
    parser.add_argument("--config", help="JSON file with TrainConfig fields (CLI wins)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt")
    parser.add_argument("--verbose", default="info")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    mne.set_log_level(args.verbose)
    values = {}
    if args.config:
        with open(args.config) as fid:
            values.update(json.load(fid))
    defaults = vars(parser.parse_args([]))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name)
        if f.name not in values or given != defaults[f.name]:
            values[f.name] = given
    cfg = TrainConfig.from_dict(values)
    out = train(cfg, resume=args.resume)
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
