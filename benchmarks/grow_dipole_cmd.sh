# Φ grown from 256 to 512 hidden units (training/loop.py _load_init: the shipped model's units are
# kept, the new ones start silent) and fine-tuned with focal sources in the training data: patches
# of order 0 (single dipoles) to 5. Otherwise as benchmarks/dipole_prior_cmd.sh (the same data at
# width 256, which did not move the dipole error): SEREEGA batches with random patch polarities
# alternating with evoked-like windows, denoiser of Tikhonov solutions; the curvature net is kept.
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-mne_learned_mm/_assets/models/fsaverage-ico3-sereega}" --data sereega+evoked --random-sign true --patch-order '[0, 5]' --n-train 8000 --n-val 32 --epochs 2 --batch-size 16 --lr 3e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 512, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 1 --checkpoint-min 3 --time-budget-min 62 --seed 31 --out runs/grow_dipole "$@"
