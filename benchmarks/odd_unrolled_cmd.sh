# 4DVarNet baseline for the sign-symmetric solver: the same odd Φ start (benchmarks/odd_prior_cmd.sh),
# an odd gradient modulator (net_even), the same data, learning rate and schedule as
# benchmarks/odd_bilevel_cmd.sh and the same wall-time budget (40 min, 1 thread).
/work/venv/bin/python -m mne_learned_mm.training --stage bilevel --model 4dvarnet --init prior --init-from "${INIT_FROM:-runs/odd_prior}" --data sereega+evoked --random-sign true --n-train 4000 --n-val 32 --epochs 1 --batch-size 8 --lr 1e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "lam": 1.0, "n_iter": 10}' --num-threads 1 --checkpoint-min 3 --time-budget-min 40 --seed 11 --out runs/odd_unrolled "$@"
