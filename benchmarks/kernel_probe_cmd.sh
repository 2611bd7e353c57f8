# Probe: does a longer temporal receptive field of Φ help the evoked time error? Two Φ-only runs from scratch,
# same data (SEREEGA + evoked-like batches) and budget, kernel 3 vs 9 (receptive field ±3 vs ±12 samples at 512 Hz).
for k in 3 9; do
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --data sereega+evoked --n-train 8000 --n-val 16 --epochs 2 --batch-size 16 --lr 1e-3 --lr-min 1e-5 --snr-db '[0, 15]' --solver "{\"prior_hidden\": 256, \"prior_kernel\": $k, \"net_hidden\": 16, \"net_rank\": 32, \"bound\": \"hvp\", \"lam\": 1.0, \"hvp_iters\": 1}" --num-threads 1 --checkpoint-min 5 --time-budget-min 24 --seed 8 --out runs/kernel$k > runs/kernel$k.log 2>&1 &
done
wait
