# Φ fine-tuned for montage robustness: each training sample drops every channel with a
# probability drawn uniformly in [0, 0.65] (90 down to ~32 channels kept, re-referenced), and its
# Tikhonov start uses its own kept channels (training/loop.py, own_channels). Otherwise as the
# odd-Φ stage (benchmarks/odd_prior_cmd.sh): SEREEGA batches with random patch polarities
# alternating with evoked-like windows. Warm start: the packaged sign-symmetric model; its
# curvature net is kept (the prior stage trains Φ only).
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-mne_learned_mm/_assets/models/fsaverage-ico3-sereega}" --data sereega+evoked --random-sign true --channel-dropout '[0, 0.65]' --n-train 8000 --n-val 32 --epochs 2 --batch-size 16 --lr 2e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 1 --checkpoint-min 3 --time-budget-min 40 --seed 23 --out runs/dropout_prior "$@"
