"""Command line: ``python -m mne_learned_mm.training --data sereega --out model_dir``.

Also runs under ``torchrun --nproc_per_node K -m mne_learned_mm.training ...``
(DistributedDataParallel, gloo on CPU, nccl on GPU). ``--resume --out DIR``
continues the run saved in DIR with its saved configuration
(``DIR/train_config.json``); options given with it change that configuration
(e.g. a larger ``--epochs``).
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import mne

from .config import CHOICES, RANGE_FIELDS, TrainConfig, field_help
from .loop import CKPT, train

CONFIG_FNAME = "train_config.json"


def _bool(text):
    value = str(text).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None


def _optional(typ):
    def parse(text):
        return None if text.lower() in ("none", "null") else typ(text)

    parse.__name__ = typ.__name__
    return parse


def _parser():
    # options not given stay absent (SUPPRESS): a resumed run keeps its saved values
    parser = argparse.ArgumentParser(
        prog="python -m mne_learned_mm.training", description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "")
        if isinstance(default, (dict, tuple)) or f.name in RANGE_FIELDS:
            parser.add_argument(flag, type=_json, metavar="JSON",
                                help=f"{text} (JSON; default: {json.dumps(default)})")
        elif isinstance(default, bool):
            parser.add_argument(flag, type=_bool, nargs="?", const=True, metavar="BOOL",
                                help=f"{text} (given alone: true; default: {default})")
        else:
            typ = type(default) if default is not None else str
            if f.name == "time_budget_min":
                typ = float
            if f.name == "num_threads":
                typ = int
            kwargs = {"choices": CHOICES[f.name]} if f.name in CHOICES else {}
            parser.add_argument(flag, type=_optional(typ) if default is None else typ,
                                help=f"{text} (default: {default})", **kwargs)
    parser.add_argument("--config", help="JSON file with TrainConfig fields (options given "
                        "on the command line win)")
    parser.add_argument("--resume", action="store_true", default=False,
                        help=f"continue the run in --out from its {CKPT}, with its saved "
                        f"{CONFIG_FNAME}; options given here change it")
    parser.add_argument("--verbose", default="info",
                        choices=("debug", "info", "warning", "error"), help="log level")
    return parser


def _config_values(args, parser):
    """defaults < saved run (--resume) < --config file < options given."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    values = {}
    if args.resume:
        out = Path(given.get("out", TrainConfig().out))
        saved = out / CONFIG_FNAME
        if not (out / CKPT).is_file() or not saved.is_file():
            parser.error(f"--resume: nothing to resume in {out} (no {CKPT} and "
                         f"{CONFIG_FNAME}); run without --resume to start a new run")
        values.update(json.loads(saved.read_text()))
    if getattr(args, "config", None):
        try:
            with open(args.config) as fid:
                values.update(json.load(fid))
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"--config {args.config}: {exc}")
    values.update(given)
    return values


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    mne.set_log_level(args.verbose)
    values = _config_values(args, parser)
    try:
        cfg = TrainConfig.from_dict(values).check()
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if cfg.fwd is not None and not Path(cfg.fwd).is_file():
        parser.error(f"--fwd {cfg.fwd}: no such file")
    out = train(cfg, resume=args.resume)
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
