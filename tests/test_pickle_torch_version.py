"""Pickle weight files under a torch whose `weights_only=True` unpickler could run code (issue 13 point 3).

Below torch 2.10 (CVE-2025-32434, CVE-2026-24747) `.pt`/`.pth` files are refused before `torch.load`
runs, with a message naming the converter; `.safetensors` still load. The torch version is set on the
`torch` module as an older install reports it.
"""

from __future__ import annotations

import pytest
import torch

from f2d_core.checkpoints import load_f2d_models, load_mapper
from f2d_core.convert import main as convert_main
from f2d_core.errors import WeightFileError
from f2d_core.faces.expression_model import load_expression_model
from f2d_core.weight_files import SAFE_TORCH, torch_release
from tests.support.synthetic_deep3d import write_published_checkpoint


@pytest.mark.parametrize("version", ["2.5.1+cu124", "2.9.1+cu128", "1.13.1"])
def test_pickle_files_are_refused_below_a_safe_torch(official_checkpoints, tmp_path, monkeypatch, version):
    deep3d = write_published_checkpoint(tmp_path / "epoch_20.pth")
    monkeypatch.setattr(torch, "__version__", version)
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))  # must never be reached
    for load, path in ((load_mapper, official_checkpoints[1]), (load_expression_model, deep3d)):
        with pytest.raises(WeightFileError) as caught:
            load(path)
        message = str(caught.value)
        assert path.name in message and "CVE-2025-32434" in message and "CVE-2026-24747" in message
        assert f"python -m f2d_core.convert --each {path.name}" in message and "torch >= 2.10" in message
    assert calls == []


def test_files_converted_under_a_safe_torch_load_under_an_old_one(official_checkpoints, tmp_path, monkeypatch):
    assert torch_release() >= SAFE_TORCH  # the test environment's torch
    deep3d = write_published_checkpoint(tmp_path / "epoch_20.pth")
    combined = tmp_path / "face2diffusion.safetensors"
    assert convert_main([*(str(p) for p in official_checkpoints), "-o", str(combined)]) == 0
    assert convert_main(["--each", str(deep3d)]) == 0
    want = load_expression_model(deep3d).state_dict()

    monkeypatch.setattr(torch, "__version__", "2.9.1")
    models = load_f2d_models(combined)
    assert models.mapper is not None
    got = load_expression_model(tmp_path / "epoch_20.safetensors").state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_torch_release_reads_local_and_dev_versions():
    assert torch_release("2.10.0+cu130") == (2, 10) and torch_release("2.9.1") == (2, 9)
    assert torch_release("2.11.0.dev20260101+cpu") == (2, 11) and torch_release("2.10.0a0+gitabc") == (2, 10)
