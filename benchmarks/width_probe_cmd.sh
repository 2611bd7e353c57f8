# Width lever probe: stage 1 (Φ alone, denoiser of Tikhonov solutions) exactly as
# benchmarks/prior_cmd.sh but with Φ hidden width ${WIDTH:-512} instead of 256 (not shipped).
W=${WIDTH:-512}
/work/venv/bin/python -m mne_learned_mm.training --stage prior --data sereega --n-train 10000 --n-val 64 --epochs 10 --batch-size 16 --lr 1e-3 --lr-min 1e-5 --snr-db '[0, 15]' --solver "{\"prior_hidden\": $W, \"net_hidden\": 16, \"net_rank\": 32, \"bound\": \"hvp\", \"lam\": 10.0}" --num-threads 1 --checkpoint-min 3 --time-budget-min 40 --out runs/prior$W "$@"
