# Φ with temporal context (MMConfig.prior_context: the second layer also sees the window's mean
# first-layer activation; the context weights start at zero, so Φ starts as the shipped one), fine-tuned
# from the shipped model as a denoiser of Tikhonov solutions on SEREEGA batches with random patch
# polarities alternating with evoked-like windows (the curvature net is kept). CONTEXT=false runs the
# control: the same fine-tune, same data, seed and schedule, without the context layer.
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-mne_learned_mm/_assets/models/fsaverage-ico3-sereega}" --data sereega+evoked --random-sign true --n-train 12000 --n-val 32 --epochs 2 --batch-size 16 --lr 3e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver "{\"prior_hidden\": 256, \"prior_odd\": true, \"prior_context\": ${CONTEXT:-true}, \"net_even\": true, \"net_hidden\": 16, \"net_rank\": 32, \"bound\": \"hvp\", \"lam\": 1.0, \"hvp_iters\": 2, \"n_iter\": 10, \"grad_iters\": 3}" --num-threads 1 --checkpoint-min 3 --time-budget-min 55 --seed 41 --out "${OUT:-runs/context_prior}" "$@"
