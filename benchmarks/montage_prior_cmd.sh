# Φ fine-tuned for montage robustness on many montages: the forward of all 343 positions of
# MNE's standard_1005 montage on the embedded fsaverage head (made once with
# make_fsaverage_forward; tools line below), each training sample keeping a random subset of
# them (drop probability uniform in [0.59, 0.91]: about 30 to 140 channels, irregular layouts),
# its Tikhonov start on its own kept channels. Otherwise as benchmarks/dropout_prior_cmd.sh.
#   python -c "import mne; from mne_learned_mm import make_fsaverage_forward as f; m = mne.channels.make_standard_montage('standard_1005'); i = mne.create_info(m.ch_names, 1000., 'eeg'); i.set_montage(m); mne.write_forward_solution('runs/fwd/fsaverage-ico3-1005-fwd.fif', f(i))"
/work/venv/bin/python -m mne_learned_mm.training --stage prior --init prior --init-from "${INIT_FROM:-mne_learned_mm/_assets/models/fsaverage-ico3-sereega}" --fwd runs/fwd/fsaverage-ico3-1005-fwd.fif --data sereega+evoked --random-sign true --channel-dropout '[0.59, 0.91]' --n-train 8000 --n-val 32 --epochs 1 --batch-size 16 --lr 2e-4 --lr-min 1e-5 --snr-db '[0, 15]' --solver '{"prior_hidden": 256, "prior_odd": true, "net_even": true, "net_hidden": 16, "net_rank": 32, "bound": "hvp", "lam": 1.0, "hvp_iters": 2, "n_iter": 10, "grad_iters": 3}' --num-threads 1 --checkpoint-min 3 --time-budget-min 35 --seed 29 --out runs/montage_prior "$@"
