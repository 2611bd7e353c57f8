# Φ fine-tuned as a denoiser of sLORETA images instead of minimum-norm (Tikhonov) images
# (--init-operator sloreta): the minimum-norm start puts a single dipole 21 mm from its true
# place on average (depth bias) and Φ only partly undoes it. Warm start: the packaged model with
# Φ's first layer rescaled to sLORETA inputs (benchmarks/sloreta_start_init.py). Otherwise exactly
# benchmarks/dipole_prior_cmd.sh (same data, seed, schedule: the minimum-norm control), 2 threads.
/work/venv/bin/python benchmarks/sloreta_start_init.py mne_learned_mm/_assets/models/fsaverage-ico3-sereega runs/sloreta_init
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-operator sloreta --init-from runs/sloreta_init --data sereega+evoked --random-sign true --patch-order '[0, 5]' --n-train 8000 --n-val 32 --epochs 2 --batch-size 16 --lr 2e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 2 --checkpoint-min 3 --time-budget-min 40 --seed 21 --out runs/sloreta_prior "$@"
