#!/usr/bin/env bash
# Train the `gpu` recipe on a lent GPU machine and bring the members back.
#
# The machine has PyTorch but not mne, nibabel or pooch, and the working tree
# that travels must stay under 64 MiB, which mne's wheels would overflow
# with the packaged model's weights (38 MB) in it. So, here, once per session:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       mne==1.13.2 nibabel==5.3.2 pooch==1.8.2 decorator==5.2.1 platformdirs==4.3.8
#   mv mne_learned_mm/_assets/models/fsaverage-ico3-bank-v9/weights.pt /tmp/  # back after
#
# then call the device tool's `run` with carry [".whl"] and the command
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#       --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD bash tools/gpu_train.sh
#
# (timeout_s 540: the recipe trains its three members side by side for
# `optim.minutes` = 4.5 minutes and a warm restart of 1.5 minutes each, then its
# MM stages). What comes back under $OUT: each member's checkpoint without its
# optimiser state and with float16 weights (under the 16 MiB a returned file
# may have), its learning curve, each MM stage's Φ and curvature net with its
# progress and learning curve, and the log. Then, here:
#
#   mkdir -p runs/gpu && cp -r FILES_AT/member* FILES_AT/mm* runs/gpu/
#   python -m mne_learned_mm.training.start gpu --out runs/gpu --export
#
# writes the model (config.json records the device and the minutes). A local
# dry run of this script: OUT=/tmp/out RECIPE=tiny DEVICE=cpu bash tools/gpu_train.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
RECIPE=${RECIPE:-gpu}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-/tmp/gpu_run}
PY=${PY:-python3}
mkdir -p "$OUT"
(nvidia-smi --query-gpu=name,memory.total --format=csv || true) | tee "$OUT/train.log"
"$PY" -m mne_learned_mm.training.start "$RECIPE" --out "$RUN" --device "$DEVICE" \
    --n-jobs 3 2>&1 | tr '\r' '\n' | grep -v "start network: *[0-9]*%" | tee -a "$OUT/train.log"
"$PY" - "$RUN" "$OUT" <<'EOF'
import sys
from pathlib import Path

import torch

run, out = Path(sys.argv[1]), Path(sys.argv[2])
for member in sorted(run.glob("member*")):
    ck = torch.load(member / "checkpoint_start.pt", map_location="cpu", weights_only=False)
    slim = {"net": {k: v.half() for k, v in ck["net"].items()}, "state": ck["state"]}
    (out / member.name).mkdir(exist_ok=True)
    torch.save(slim, out / member.name / "checkpoint_start.pt")
    (out / member.name / "history_start.csv").write_bytes(
        (member / "history_start.csv").read_bytes())
    print(member.name, ck["state"])
for stage in sorted(run.glob("mm[0-9]*")):  # the MM stages: Φ and the curvature net
    (out / stage.name).mkdir(exist_ok=True)
    weights = torch.load(stage / "weights.pt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in weights.items() if not k.startswith("start.")},
               out / stage.name / "weights.pt")  # the frozen start is the members'
    ck = torch.load(stage / "checkpoint.pt", map_location="cpu", weights_only=False)
    torch.save({"state": ck["state"]}, out / stage.name / "checkpoint.pt")  # progress only
    for name in ("config.json", "history.csv", "train_config.json"):
        (out / stage.name / name).write_bytes((stage / name).read_bytes())
    print(stage.name, {k: v for k, v in ck["state"].items() if k != "history"})
EOF
