# Odd prior (Φ(−X) = −Φ(X)), warm-started from the stage 1-3 solver shipped before it
# (kept as benchmarks/models/mm-fsaverage-ico3-sereega-v1; packaged at commit 7abeebb), Φ fine-tuned as a
# denoiser of Tikhonov solutions on SEREEGA batches with random patch polarities alternating with
# evoked-like windows. The curvature net is kept from stage 2 (the prior stage trains Φ only).
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-benchmarks/models/mm-fsaverage-ico3-sereega-v1}" --data sereega+evoked --random-sign true --n-train 8000 --n-val 32 --epochs 2 --batch-size 16 --lr 3e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 1 --checkpoint-min 3 --time-budget-min 42 --seed 5 --out runs/odd_prior "$@"
