# Sign-symmetric NMM-trained model (for the NMM -> SEREEGA cross-domain row): the NMM-trained Φ
# (benchmarks/nmm_prior_cmd.sh) made odd and fine-tuned on Jansen-Rit clips with random patch
# polarities, as stage 4 did for the SEREEGA model (benchmarks/odd_prior_cmd.sh). Φ only; the
# curvature net stays untrained (even), as in the NMM model before it.
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-benchmarks/models/mm-fsaverage-ico3-nmm}" --data nmm --random-sign true --n-train 6000 --n-val 32 --epochs 1 --batch-size 8 --lr 3e-4 --lr-min 1e-5 --snr-db '[5, 20]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 1}' --num-threads 1 --checkpoint-min 3 --time-budget-min 26 --seed 7 --out runs/odd_nmm "$@"
