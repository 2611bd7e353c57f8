"""Warm start for an sLORETA-start fine-tune: a copy of a model whose Φ sees sLORETA images.

The sLORETA image is the minimum-norm image with each source divided by
``dᵢ = sqrt((K L)ᵢᵢ)`` (:func:`mne_learned_mm.solver.init.tikhonov_operator`). Φ's
first layer is linear, so scaling its input channel ``i`` by ``dᵢ`` (and by the
median ratio of the two images' norms, both being normalised to unit norm) makes
the copy compute on sLORETA images what the original computed on minimum-norm
images, up to that per-sample ratio. The copy's config says ``init_operator:
"sloreta"``; ``benchmarks/sloreta_prior_cmd.sh`` fine-tunes it.

Usage: python benchmarks/sloreta_start_init.py SRC_MODEL OUT_DIR
"""

import sys
from pathlib import Path

import torch

from mne_learned_mm.pretrained import load_state, save_model
from mne_learned_mm.solver.init import normalise_problem, tikhonov_operator
from mne_learned_mm.training import TrainConfig
from mne_learned_mm.training.loop import _batch, _datasets, _load_forward


def main(src, out):
    state, config = load_state(src)
    cfg = TrainConfig(data="sereega", n_train=256, n_val=2, random_sign=True, seed=99)
    fwd = _load_forward(cfg)
    train_sets = _datasets(cfg, fwd)[0]
    L = normalise_problem(torch.zeros(1, 1, 1), torch.as_tensor(train_sets[0].L))[1]
    reg = config.get("init_reg", 1.0 / 9.0)
    K = tikhonov_operator(L, reg)
    K_s = tikhonov_operator(L, reg, "sloreta")
    d = K.norm(dim=1) / K_s.norm(dim=1)  # the per-source standardisation
    Y = _batch(train_sets, range(256))[0]
    image = lambda op: torch.einsum("sn,bnt->bst", op, Y).flatten(1).norm(dim=1)  # noqa: E731
    ratio = image(K_s) / image(K)
    scale = d * ratio.median()
    state = dict(state)
    state["prior.conv1.weight"] = state["prior.conv1.weight"] * scale[None, :, None]
    config = dict(config, init_operator="sloreta")
    save_model(out, state, config)
    print(f"{out}: Φ input rescaled (median norm ratio {ratio.median():.3g}, "
          f"spread {ratio.min():.3g}-{ratio.max():.3g})")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
