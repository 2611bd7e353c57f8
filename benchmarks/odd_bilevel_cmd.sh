# Alg. 2 bilevel stage of the sign-symmetric solver (odd Φ, even curvature net), from the odd-Φ
# fine-tune (benchmarks/odd_prior_cmd.sh): all weights trained through 10 unrolled MM iterations
# (gradient through the last 3) on SEREEGA batches with random patch polarities alternating with
# evoked-like windows.
/work/venv/bin/python -m mne_learned_mm.training --stage bilevel --model mm --init prior --init-from "${INIT_FROM:-runs/odd_prior}" --data sereega+evoked --random-sign true --n-train 4000 --n-val 32 --epochs 1 --batch-size 8 --lr 1e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 1 --checkpoint-min 3 --time-budget-min 40 --seed 11 --out runs/odd_bilevel "$@"
