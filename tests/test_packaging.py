"""The built wheel carries the package data (head model, default forward, model)."""

import subprocess
import sys
import zipfile

import pytest


def test_wheel_contains_assets(tmp_path):
    pytest.importorskip("setuptools")
    import mne_learned_mm

    root = __import__("pathlib").Path(mne_learned_mm.__file__).parents[1]
    if not (root / "setup.cfg").is_file():
        pytest.skip("not running from a source checkout")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    from mne_learned_mm.pretrained import DEFAULT_MODEL, PACKAGED

    model = f"mne_learned_mm/_assets/models/{PACKAGED[DEFAULT_MODEL]}"
    for asset in ("mne_learned_mm/_assets/fsaverage_head.tar.gz",
                  "mne_learned_mm/_assets/fsaverage-ico3-default-fwd.fif",
                  f"{model}/weights.pt", f"{model}/config.json",
                  *(f"mne_learned_mm/training/recipes/{name}.json"
                    for name in ("default", "tiny", "paper"))):
        assert asset in names
    assert not any("__pycache__" in n for n in names)
