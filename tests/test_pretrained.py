"""Model registry: pooch downloads from a local server, save/load safety."""

import hashlib
import http.server
import pickle
import socket
import threading
from functools import partial

import pytest
import torch

from mne_learned_mm.pretrained import fetch_pretrained, load_state, save_model


@pytest.fixture()
def http_dir(tmp_path):
    """Serve tmp_path/'srv' on 127.0.0.1 in a thread; yields (dir, base_url)."""
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    handler = partial(_QuietHandler, directory=str(srv_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield srv_dir, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    n_requests = 0

    def do_GET(self):  # noqa: N802
        type(self).n_requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def _entry(srv_dir, base, payload, sha=None):
    (srv_dir / "model.bin").write_bytes(payload)
    sha = sha or hashlib.sha256(payload).hexdigest()
    return {"m": {"fname": "model.bin", "sha256": sha, "url": f"{base}/model.bin"}}


def test_download_and_cache_reuse(http_dir, tmp_path):
    srv_dir, base = http_dir
    reg = _entry(srv_dir, base, b"weights" * 100)
    cache = tmp_path / "cache"
    _QuietHandler.n_requests = 0
    fname = fetch_pretrained("m", registry=reg, path=cache)
    assert fname.read_bytes() == b"weights" * 100
    assert _QuietHandler.n_requests == 1
    fname2 = fetch_pretrained("m", registry=reg, path=cache)
    assert fname2 == fname
    assert _QuietHandler.n_requests == 1  # served from the cache


def test_hash_mismatch_rejected(http_dir, tmp_path):
    srv_dir, base = http_dir
    reg = _entry(srv_dir, base, b"tampered", sha="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="does not match its sha256"):
        fetch_pretrained("m", registry=reg, path=cache)
    assert not (cache / "model.bin").exists()


def test_server_down_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reg = {"m": {"fname": "x.bin", "sha256": "0" * 64, "url": f"http://127.0.0.1:{port}/x"}}
    with pytest.raises(RuntimeError, match="Could not download model 'm'"):
        fetch_pretrained("m", registry=reg, path=tmp_path)


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown model"):
        fetch_pretrained("nope")


def test_save_load_roundtrip(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.zeros(2)}
    save_model(tmp_path / "m", state, {"kind": "test", "n": 3})
    state2, config = load_state(tmp_path / "m")
    assert config == {"kind": "test", "n": 3}
    torch.testing.assert_close(state2["w"], state["w"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with open(tmp_path / "m" / "weights.pt", "wb") as fid:
        pickle.dump({"w": _Evil()}, fid)
    with pytest.raises(ValueError, match="Refusing to load"):
        load_state(tmp_path / "m")


def test_corrupted_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_state(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="Refusing to load"):
        load_state(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="neither a known model"):
        load_state(tmp_path / "missing")


def test_flat_solver_settings_of_the_shipped_models():
    """config.json keeps the solver flat; the loader sorts it into the three configs."""
    from mne_learned_mm.pretrained import load_model
    from mne_learned_mm.solver import MMConfig

    pipeline, config = load_model()
    module = pipeline.module
    assert config["solver"]["prior_hidden"] == module.prior.conv1.out_channels == 256
    assert module.prior.odd and module.curvature.even
    assert module.config == MMConfig(n_iter=0, bound="hvp", hvp_iters=1, lam=1.0, grad_iters=3)
    assert load_model(n_iter=4, bound="scaled")[0].module.config.bound == "scaled"


def test_unknown_solver_setting_is_a_clear_error(tmp_path):
    from mne_learned_mm.pretrained import load_model

    state, config = load_state("default")
    config = dict(config, solver=dict(config["solver"], prior_context=True))
    save_model(tmp_path, state, config)
    with pytest.raises(ValueError, match=r"Unknown solver setting\(s\) \['prior_context'\]"):
        load_model(tmp_path)
