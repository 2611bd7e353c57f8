"""The benchmark scripts that RESULTS.md quotes still run against the current API."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [["--n-iter", "2"], ["--random-sign"]])
def test_prior_floor_script_prints_its_table(extra):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_prior_floor.py"), "--n", "3",
         "--seed", "5", *extra], check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (Φ\(X\)|start, noise-free|solve, noise-free|solve, SNR"
                     r"|solve, SNR, Φ = truth) \| "
                     r"([\d.]+) / ([\d.]+) \|", line)
        if m:
            rows[m[1]] = (float(m[2]), float(m[3]))
    assert len(rows) == 5, out
    for le, auc in rows.values():
        assert 0 <= le < 150 and 0 <= auc <= 100
    costs = {m[1]: [float(v) for v in m.groups()[1:]] for m in (
        re.match(r"\| (start X0|truth X|solve) \| ([\d.-]+) \| ([\d.-]+) \| ([\d.-]+) \|",
                 line) for line in out.splitlines()) if m}
    assert len(costs) == 3, out
    lam = float(re.search(r"\(λ = ([\d.e+-]+)\)", out)[1])
    for u, data, prior in costs.values():  # u = data + λ prior
        assert u == pytest.approx(data + lam * prior, abs=2e-4) and 0 <= prior <= 2
    shares = re.search(r"u\(X\) < u\(X0\): ([\d.]+); with u\(solve\) < u\(X\): ([\d.]+)", out)
    assert shares and all(0 <= float(v) <= 1 for v in shares.groups()), out


def test_mne_simulation_script_prints_its_table():
    """MNE's simulation tools: the true sources peak in their patches, AUC 100."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_mne_simulation.py"), "--n", "2",
         "--seed", "3", "--methods", "truth", "learned_mm", "sLORETA", "--baseline", "1"],
        check=True, capture_output=True, text=True).stdout
    rows = {line.split("|")[1].strip(): [float(c.split("±")[0]) for c in line.split("|")[2:7]]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| method")}
    assert set(rows) == {"truth", "learned_mm", "sLORETA"}, out
    le, le_patch, auc, nmse, te = rows["truth"]
    assert le_patch == 0 and auc == 100 and nmse == 0 and te == 0
    for le, le_patch, auc, _, _ in rows.values():
        assert 0 <= le_patch <= le < 150 and 50 <= auc <= 100


def test_start_script_prints_its_table():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_start.py"), "--model", "new=default",
         "--model", "again=default", "--n-iter", "0", "1", "--n", "2", "--seed", "5",
         "--channels", "32", "--sloreta"],
        check=True, capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if line.startswith(("| new |", "| sLORETA |"))]
    assert len(rows) == 3, out
    for row in rows:
        le = float(row.split("|")[3].split("±")[0])
        assert 0 <= le < 150
    # the same model again: its paired differences to the first model are zero
    again = [line.split("|")[9].strip() for line in out.splitlines()
             if line.startswith("| again |")]
    assert again == ["+0.00 ± 0.00 / +0.00 ± 0.00 / +0.00 ± 0.00"] * 2, out


@pytest.mark.parametrize("mismatch", [["--sim-conductivity", "0.3", "0.015", "0.3"],
                                      ["--sim-jitter", "5"]])
def test_start_script_mismatch_refuses_by_share(mismatch):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_start.py"), "--model", "new=default",
         "--by-share", *mismatch],
        capture_output=True, text=True)
    assert run.returncode == 2 and "--by-share needs the data's own forward" in run.stderr


def test_start_script_moves_electrodes_along_the_scalp(fwd_default):
    spec = importlib.util.spec_from_file_location("bench_start",
                                                  ROOT / "benchmarks" / "bench_start.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    info = fwd_default["info"]
    moved = bench._jittered(info, 5e-3, np.random.default_rng(0))
    assert moved["ch_names"] == info["ch_names"]
    before = np.array([ch["loc"][:3] for ch in info["chs"]])
    step = np.array([ch["loc"][:3] for ch in moved["chs"]]) - before
    radial = before - before.mean(0)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.sqrt(np.square(step).sum(1).mean()) == pytest.approx(5e-3, rel=1e-6)
    np.testing.assert_allclose((step * radial).sum(1), 0, atol=1e-9)  # along the scalp
    assert np.linalg.norm(step, axis=1).min() > 0  # every electrode moved
