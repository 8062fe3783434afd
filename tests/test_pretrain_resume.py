"""The SSL and Med3D pretraining loops run on ``fit()``'s parts: a SIGTERM stops them after the
current step with ``resume.pt`` in the output folder (``PreemptedError``), and the same call again
ends exactly as an uninterrupted pretraining — same losses, same history, bit-identical weights.
Tiny: cbr_tiny on 16 px synthetic images (SSL), the Med3D example's smoke (4 steps)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from transfuse import _signals
from transfuse.errors import PreemptedError
from transfuse.pretrain import load_pretrain, load_pretrain_data, pretrain_med3d, pretrain_ssl, ssl_from_dict
from transfuse.pretrain import med3d as med3d_module
from transfuse.pretrain.ssl import IndexStream, SSLMethod
from transfuse.train.resume import RESUME_FILE
from tests.test_ssl import _npz, _raw

pytestmark = pytest.mark.usefixtures("one_thread_module")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "med3d_pretrain.yaml"


@pytest.fixture
def quiet_signals(monkeypatch):
    """A SIGTERM sent to this process during the test touches only this test's guard."""
    for name, value in (("_shared", None), ("_stop_here", False), ("_received", None), ("_sigints", 0)):
        monkeypatch.setattr(_signals, name, value)


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's SigtermGuard: a stop request


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _same(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n, batch", [(10, 4), (3, 4)])
def test_index_stream_resumes_its_draws(n, batch):
    import numpy as np

    a = IndexStream(n, batch, np.random.default_rng(0))
    ref = [next(a).tolist() for _ in range(9)]
    b = IndexStream(n, batch, np.random.default_rng(0))
    got = [next(b).tolist() for _ in range(4)]
    state = b.state_dict()
    c = IndexStream(n, batch, np.random.default_rng(99))
    c.load_state_dict(state)
    assert got + [next(c).tolist() for _ in range(5)] == ref


@pytest.mark.parametrize("method", ["byol", "restoration"])
def test_ssl_stopped_by_sigterm_resumes_bit_identical(method, tmp_path, monkeypatch, quiet_signals):
    _npz(tmp_path / "data", "pneumoniamnist", (20, 4, 4), 2)
    spec = ssl_from_dict(_raw(tmp_path / "data", method=method, steps=6, batch_size=8))
    ref = pretrain_ssl(spec, out_dir=tmp_path / "ref", progress=False, device="cpu").summary

    after_step = SSLMethod.after_step

    def stop_at_step_3(self, step, steps, spec):
        after_step(self, step, steps, spec)
        if step == 2:  # 0-based: the third step
            _sigterm()

    with monkeypatch.context() as m:
        m.setattr(SSLMethod, "after_step", stop_at_step_3)
        with pytest.raises(PreemptedError, match="after step 3 of 6; its checkpoint is kept"):
            pretrain_ssl(spec, out_dir=tmp_path / "cut", progress=False, device="cpu")
    assert torch.load(tmp_path / "cut" / RESUME_FILE, weights_only=True)["step"] == 3
    assert not (tmp_path / "cut" / "pretrain.json").exists()  # not finished
    monkeypatch.setattr(_signals, "_stop_here", False)
    cut = pretrain_ssl(spec, out_dir=tmp_path / "cut", progress=False, device="cpu").summary
    assert cut["loss"] == ref["loss"] and len(cut["loss"]) == 6
    assert cut["cost"]["images_seen"] == ref["cost"]["images_seen"]
    assert _same(_tensors(tmp_path / "cut" / "encoder.pt"), _tensors(tmp_path / "ref" / "encoder.pt"))
    assert (json.loads((tmp_path / "cut" / "images.json").read_text())
            == json.loads((tmp_path / "ref" / "images.json").read_text()))
    assert not (tmp_path / "cut" / RESUME_FILE).exists()


def test_ssl_ignores_another_configs_checkpoint(tmp_path, monkeypatch, quiet_signals):
    _npz(tmp_path / "data", "pneumoniamnist", (20, 4, 4), 2)
    spec = ssl_from_dict(_raw(tmp_path / "data", steps=4, batch_size=8))
    with monkeypatch.context() as m:
        m.setattr(SSLMethod, "after_step", lambda self, step, steps, spec: _sigterm())
        with pytest.raises(PreemptedError):
            pretrain_ssl(spec, out_dir=tmp_path / "o", progress=False, device="cpu")
    monkeypatch.setattr(_signals, "_stop_here", False)
    other = ssl_from_dict(_raw(tmp_path / "data", steps=4, batch_size=8, seed=1))
    ref = pretrain_ssl(other, out_dir=tmp_path / "ref", progress=False, device="cpu").summary
    got = pretrain_ssl(other, out_dir=tmp_path / "o", progress=False, device="cpu").summary
    assert got["loss"] == ref["loss"]  # started over: the foreign checkpoint was dropped


def test_med3d_stopped_by_sigterm_resumes_bit_identical(tmp_path, monkeypatch, quiet_signals):
    spec = load_pretrain(EXAMPLE).shrink()  # 4 steps, evaluations at 2 and 4
    data = load_pretrain_data(spec)
    ref = pretrain_med3d(spec, out_dir=tmp_path / "ref", device="cpu", progress=False, data=data).summary

    step = med3d_module.pretrain_step
    calls = []

    def stop_at_step_3(*args, **kw):
        out = step(*args, **kw)
        calls.append(1)
        if len(calls) == 3:
            _sigterm()
        return out

    with monkeypatch.context() as m:
        m.setattr(med3d_module, "pretrain_step", stop_at_step_3)
        with pytest.raises(PreemptedError, match="after step 3 of 4"):
            pretrain_med3d(spec, out_dir=tmp_path / "cut", device="cpu", progress=False, data=data)
    assert torch.load(tmp_path / "cut" / RESUME_FILE, weights_only=True)["step"] == 3
    monkeypatch.setattr(_signals, "_stop_here", False)
    cut = pretrain_med3d(spec, out_dir=tmp_path / "cut", device="cpu", progress=False, data=data).summary
    assert cut["datasets"] == ref["datasets"]  # val history per dataset, steps drawn, final Dice
    for name in ("encoder.pt", "heads.pt"):
        assert _same(_tensors(tmp_path / "cut" / name), _tensors(tmp_path / "ref" / name)), name
    assert not (tmp_path / "cut" / RESUME_FILE).exists()
