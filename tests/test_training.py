"""Bilevel training: tiny runs, exact resume, determinism, DDP with gloo."""

import json
import shutil
import subprocess
import sys

import mne
import pytest
import torch

from mne_learned_mm import LearnedMMInverse
from mne_learned_mm.pretrained import load_model, load_state
from mne_learned_mm.training import TrainConfig, train

TINY_SOLVER = {"n_iter": 2, "prior_hidden": 8, "net_hidden": 4, "net_rank": 8,
               "bound": "hvp", "hvp_iters": 1}


@pytest.fixture(scope="module")
def small_fwd_fname(fwd_small, tmp_path_factory):
    fname = tmp_path_factory.mktemp("fwd") / "small-fwd.fif"
    with pytest.warns(RuntimeWarning, match="free orientation"):  # fixed fwd to disk
        mne.write_forward_solution(fname, fwd_small, overwrite=True, verbose=False)
    return str(fname)


def _cfg(fwd_fname, out, **kw):
    base = dict(fwd=fwd_fname, n_train=16, n_val=4, batch_size=4, epochs=2,
                solver=TINY_SOLVER, num_threads=1, out=str(out), lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(out):
    return load_state(out)[0]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_tiny_training_model_is_usable(small_fwd_fname, fwd_small, tmp_path):
    out = train(_cfg(small_fwd_fname, tmp_path / "m", init="prior"))
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and {"LE", "AUC", "val_loss", "train_loss"} <= set(history[0])
    config = json.loads((out / "config.json").read_text())
    assert config["n_sources"] == fwd_small["nsource"]
    assert config["ch_names"] == fwd_small["info"]["ch_names"]
    assert config["train"]["solver"] == TINY_SOLVER
    inv = LearnedMMInverse(model=out, device="cpu").fit(fwd_small)
    ev = mne.EvokedArray(fwd_small["sol"]["data"][:, :8] @ torch.rand(8, 20).double().numpy(),
                         mne.create_info(fwd_small["info"]["ch_names"], 512.0, "eeg"),
                         verbose=False)
    stc = inv.apply(ev)
    assert stc.data.shape == (fwd_small["nsource"], 20)
    assert torch.isfinite(torch.as_tensor(stc.data)).all()


def test_training_is_deterministic(small_fwd_fname, tmp_path):
    train(_cfg(small_fwd_fname, tmp_path / "a", epochs=1))
    train(_cfg(small_fwd_fname, tmp_path / "b", epochs=1))
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_resume_continues_exactly(small_fwd_fname, tmp_path):
    train(_cfg(small_fwd_fname, tmp_path / "full"))
    # "killed" after its first step: the time budget stops it and checkpoints
    train(_cfg(small_fwd_fname, tmp_path / "resumed", time_budget_min=0.0))
    first = _weights(tmp_path / "resumed")
    train(_cfg(small_fwd_fname, tmp_path / "resumed"), resume=True)
    resumed = _weights(tmp_path / "resumed")
    _assert_same(_weights(tmp_path / "full"), resumed)
    assert any(not torch.equal(first[k], resumed[k]) for k in first)


def test_random_sign_and_odd_prior(small_fwd_fname, tmp_path):
    from mne_learned_mm.training.loop import _simulation_config

    assert _simulation_config("sereega", 512.0) is None
    assert _simulation_config("sereega", 512.0, random_sign=True).random_sign
    assert _simulation_config("nmm", 512.0, random_sign=True).random_sign
    solver = dict(TINY_SOLVER, prior_odd=True)
    out = train(_cfg(small_fwd_fname, tmp_path / "odd", epochs=1, stage="prior",
                     random_sign=True, solver=solver))
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["random_sign"] and config["train"]["solver"]["prior_odd"]
    assert load_model(out)[0].module.prior.odd


def test_init_from_starts_from_the_weights(small_fwd_fname, tmp_path):
    from mne_learned_mm.pretrained import build_solver
    from mne_learned_mm.training.loop import _load_init

    first = train(_cfg(small_fwd_fname, tmp_path / "first", epochs=1, stage="prior"))
    n_sources = json.loads((first / "config.json").read_text())["n_sources"]
    module = build_solver("mm", TINY_SOLVER, n_sources)
    _load_init(module, first)
    _assert_same(module.state_dict(), _weights(first))
    out = train(_cfg(small_fwd_fname, tmp_path / "second", epochs=1, init="prior",
                     init_from=str(first)))
    assert json.loads((out / "config.json").read_text())["train"]["init_from"] == str(first)
    assert not torch.equal(_weights(out)["curvature.head1.weight"],
                           _weights(first)["curvature.head1.weight"])  # trained on


def test_removed_settings_are_refused():
    with pytest.raises(ValueError, match="Unknown solver setting"):
        TrainConfig(solver={"prior_context": True}).check()
    with pytest.raises(TypeError, match="pretrain_phi_steps"):
        TrainConfig(pretrain_phi_steps=2)
    with pytest.raises(ValueError, match="Unknown TrainConfig fields"):
        TrainConfig.from_dict({"num_workers": 0})


def test_unrolled_baseline_trains(small_fwd_fname, tmp_path):
    out = train(_cfg(small_fwd_fname, tmp_path / "u", model="4dvarnet", epochs=1))
    assert json.loads((out / "config.json").read_text())["kind"] == "4dvarnet"


def test_ddp_two_processes_keep_replicas_identical(small_fwd_fname, tmp_path):
    torchrun = shutil.which("torchrun") or None
    cmd = ([torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"])
    cmd += ["--nproc_per_node", "2", "-m", "mne_learned_mm.training", "--fwd", small_fwd_fname,
            "--n-train", "16", "--n-val", "4", "--batch-size", "4", "--epochs", "1",
            "--solver", json.dumps(TINY_SOLVER), "--num-threads", "1", "--verbose", "warning",
            "--out", str(tmp_path / "ddp")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=tmp_path)
    digests = [(tmp_path / "ddp" / f"rank{r}-weights.sha1").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    # each replica saw half of the data: 16 samples / (2 ranks x batch 4) = 2 steps each
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert history[-1]["step"] == 2


def test_bad_stage(small_fwd_fname, tmp_path):
    with pytest.raises(ValueError, match="stage must be"):
        train(_cfg(small_fwd_fname, tmp_path / "x", stage="nope"))


# -- the training CLI (issue 19, item 11) ---------------------------------------------
def _cli(small_fwd_fname, out, *extra):
    return ["--fwd", small_fwd_fname, "--n-train", "16", "--n-val", "4", "--batch-size", "4",
            "--epochs", "2", "--solver", json.dumps(TINY_SOLVER), "--num-threads", "1",
            "--out", str(out), "--verbose", "warning", *extra]


def test_cli_help_has_descriptions_and_choices():
    from mne_learned_mm.training.__main__ import _parser

    text = _parser().format_help()
    assert "draw each SEREEGA/NMM patch's polarity at random" in text
    assert "{sereega,nmm,evoked,mix,sereega+evoked}" in text
    assert "{mm,4dvarnet}" in text and "number of epochs" in text
    assert _parser().parse_args(["--random-sign"]).random_sign is True
    assert _parser().parse_args(["--random-sign", "false"]).random_sign is False


def test_cli_bad_data_and_empty_resume_write_nothing(tmp_path, capsys):
    from mne_learned_mm.training.__main__ import main

    with pytest.raises(SystemExit):
        main(["--data", "foo", "--out", str(tmp_path / "a")])
    assert "invalid choice: 'foo'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit):
        main(["--resume", "--out", str(tmp_path / "b")])
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(_cfg(None, tmp_path / "c"), resume=True)
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="n_train"):
        train(_cfg(None, tmp_path / "d", n_train=2))
    assert not (tmp_path / "d").exists()


def test_cli_resume_reads_the_saved_config(small_fwd_fname, tmp_path):
    from mne_learned_mm.training.__main__ import main

    main(_cli(small_fwd_fname, tmp_path / "full"))
    main(_cli(small_fwd_fname, tmp_path / "run", "--time-budget-min", "0"))  # one step
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == 1
    # no other option: the solver, data and budget come from the saved run; the budget
    # is given again here (it is of this run, so it does not stop after one step)
    main(["--resume", "--out", str(tmp_path / "run"), "--time-budget-min", "10"])
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "run"))


def test_resume_with_another_solver_is_a_clear_error(small_fwd_fname, tmp_path):
    train(_cfg(small_fwd_fname, tmp_path / "m", epochs=1))
    wider = dict(TINY_SOLVER, prior_hidden=16)
    with pytest.raises(ValueError, match="another shape"):
        train(_cfg(small_fwd_fname, tmp_path / "m", epochs=2, solver=wider), resume=True)


def test_resume_with_more_epochs_stretches_the_schedule(small_fwd_fname, tmp_path):
    train(_cfg(small_fwd_fname, tmp_path / "m", epochs=2, lr_min=1e-5))
    train(_cfg(small_fwd_fname, tmp_path / "m", epochs=4, lr_min=1e-5), resume=True)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    # the cosine continues down to its floor over the new total instead of a new cycle
    assert history[2]["lr"] < 0.5 * 1e-3 and history[-1]["lr"] == pytest.approx(1e-5)


def test_time_budget_is_per_run(small_fwd_fname, tmp_path):
    from mne_learned_mm.training import loop

    train(_cfg(small_fwd_fname, tmp_path / "m", time_budget_min=0.0))  # one step
    ck = torch.load(tmp_path / "m" / loop.CKPT, weights_only=False)
    ck["state"]["elapsed"] = 1e6  # earlier runs took long
    torch.save(ck, tmp_path / "m" / loop.CKPT)
    train(_cfg(small_fwd_fname, tmp_path / "m", time_budget_min=10.0), resume=True)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history[-1]["step"] == 8 and history[-1]["epoch"] == 1  # ran to the end


def test_bilevel_training_for_the_amortized_start(fwd_default, tmp_path):
    """Alg. 2 for the shipped start: Φ and the curvature net learn, the start stays frozen
    and travels with the model, which then solves from it with descent."""
    with pytest.raises(ValueError, match="needs init_from"):
        TrainConfig(init="amortized").check()
    source, source_config = load_state("default")
    solver = {**source_config["solver"], "n_iter": 2, "grad_iters": 1}
    out = train(TrainConfig(n_train=4, n_val=2, batch_size=2, epochs=1, solver=solver,
                            init="amortized", init_from="default", num_threads=1,
                            out=str(tmp_path / "m"), lr=1e-3, random_sign=True))
    trained, config = load_state(out)
    assert config["init"] == "amortized" and config["start"] == source_config["start"]
    starts = [k for k in source if k.startswith("start.")]
    assert starts and all(torch.equal(trained[k], source[k]) for k in starts)  # frozen
    assert not all(torch.equal(trained[k], source[k]) for k in trained
                   if k.startswith("prior."))  # Φ was trained
    pipe, _ = load_model(out)
    L = torch.as_tensor(fwd_default["sol"]["data"], dtype=torch.float32)
    Y = L[:, :3] @ torch.rand(3, 16, generator=torch.Generator().manual_seed(1))
    X, history = pipe.solve((Y - Y.mean(0))[None], L)
    assert torch.isfinite(X).all()
    assert torch.all(history.cost[:, 1:] <= history.cost[:, :-1] + 1e-5)
