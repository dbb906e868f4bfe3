"""Weight files: official and converted files load; every bad file gets a message naming it and the problem."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from f2d_core.checkpoints import load_f2d_models, load_mapper, load_msid, sha256_of
from f2d_core.convert import main as convert_main
from f2d_core.errors import WeightFileError
from tests.support import synthetic_deep3d
from tests.support.formula_weights import official_state_dicts


@pytest.fixture(scope="module")
def state_dicts():
    return official_state_dicts()


def _same_parameters(model: torch.nn.Module, sd: dict) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_official_files_load_in_eval_mode(official_checkpoints, state_dicts):
    models = load_f2d_models(*official_checkpoints)
    assert not models.msid.training and not models.mapper.training
    assert _same_parameters(models.msid, state_dicts[0]) and _same_parameters(models.mapper, state_dicts[1])
    assert sum(p.numel() for p in models.msid.parameters()) == 21_450_624  # 21_453_700 with BN buffers
    assert sum(p.numel() for p in models.mapper.parameters()) == 12_000_832


def test_converter_writes_one_safetensors_with_provenance(official_checkpoints, tmp_path, state_dicts):
    msid_path, mapping_path = official_checkpoints
    out = tmp_path / "face2diffusion.safetensors"
    assert convert_main([str(msid_path), str(mapping_path), "-o", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "face2diffusion"
    assert meta["source_msid_sha256"] == sha256_of(msid_path)
    assert meta["source_mapping_sha256"] == sha256_of(mapping_path)
    assert "CC BY-NC-SA 4.0" in meta["license"]
    models = load_f2d_models(out)  # one combined file serves both parts
    assert _same_parameters(models.msid, state_dicts[0]) and _same_parameters(models.mapper, state_dicts[1])
    assert not list(tmp_path.glob("*.partial"))


def test_converter_reports_a_bad_input_and_fails(tmp_path, official_checkpoints, caplog):
    bogus = tmp_path / "mapping.pt"
    bogus.write_text("not weights")
    assert convert_main([str(official_checkpoints[0]), str(bogus), "-o", str(tmp_path / "o.safetensors")]) == 1
    assert "mapping.pt could not be read" in caplog.text
    assert not (tmp_path / "o.safetensors").exists()


def test_converter_runs_from_any_folder_and_speaks_as_a_command_line(tmp_path, official_checkpoints):
    """cli/convert.py as a subprocess from another folder; a swapped file names the argument and the fix."""
    msid_path, mapping_path = official_checkpoints
    script = Path(__file__).resolve().parents[1] / "cli" / "convert.py"
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=elsewhere)

    done = run(str(msid_path), str(mapping_path), "-o", "f2d.safetensors")
    assert done.returncode == 0, done.stderr
    assert "choose it as msid_file" in done.stderr
    load_f2d_models(elsewhere / "f2d.safetensors")
    done = run(str(mapping_path), str(msid_path), "-o", "swapped.safetensors")
    assert done.returncode == 1 and not (elsewhere / "swapped.safetensors").exists()
    assert f"MSID {mapping_path}: {mapping_path} is not the F2D MSID encoder" in done.stderr
    assert "Fix: give the official msid.pt as the first argument (MSID)." in done.stderr
    assert "Pick the right file for this input" not in done.stderr and "Traceback" not in done.stderr
    assert "python custom_nodes/comfyui-face2diffusion/cli/convert.py" in run("--help").stdout
    pack_dir = script.parents[1]  # and the module form still runs in the pack's folder
    module = subprocess.run([sys.executable, "-m", "f2d_core.convert", "--help"], capture_output=True, cwd=pack_dir)
    assert module.returncode == 0


def test_plain_safetensors_of_each_part_load(tmp_path, state_dicts):
    save_file(state_dicts[0], str(tmp_path / "msid.safetensors"))
    save_file(state_dicts[1], str(tmp_path / "mapping.safetensors"))
    assert _same_parameters(load_msid(tmp_path / "msid.safetensors"), state_dicts[0])
    assert _same_parameters(load_mapper(tmp_path / "mapping.safetensors"), state_dicts[1])


def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, state_dicts):
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dicts[1].items()}}, tmp_path / "m.pt")
    assert _same_parameters(load_mapper(tmp_path / "m.pt"), state_dicts[1])


def test_missing_file(tmp_path):
    with pytest.raises(WeightFileError, match=r"msid\.pt does not exist"):
        load_msid(tmp_path / "msid.pt")


def test_truncated_download_of_pt(tmp_path, official_checkpoints):
    data = official_checkpoints[1].read_bytes()
    cut = tmp_path / "mapping.pt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightFileError, match=r"mapping\.pt could not be read.*truncated.*Download it again"):
        load_mapper(cut)


def test_download_page_saved_as_the_weight_file(tmp_path):
    page = tmp_path / "msid.pt"  # what a browser saves when Google Drive shows its virus-scan page
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(WeightFileError, match=r"msid\.pt is a web page, not a weight file.*Download anyway"):
        load_msid(page)


def test_truncated_safetensors(tmp_path, state_dicts):
    full = tmp_path / "full.safetensors"
    save_file(state_dicts[1], str(full))
    cut = tmp_path / "mapping.safetensors"
    cut.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(WeightFileError, match=r"mapping\.safetensors is not a valid \.safetensors file.*truncated"):
        load_mapper(cut)


class _Payload:
    """An object whose unpickling would run code: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mapping.pt"
    with open(path, "wb") as f:
        torch.save({"null_exp": torch.zeros(64), "evil": _Payload(marker)}, f)
    with pytest.raises(
        WeightFileError, match=r"holds pickled Python objects \(posix\.mkdir\) besides tensors.*never unpickles code"
    ):
        load_mapper(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "mapping.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(WeightFileError, match=r"mapping\.pt"):
        load_mapper(path)


def test_training_checkpoint_with_settings_is_not_a_state_dict(tmp_path, state_dicts):
    torch.save({**state_dicts[1], "epoch": 3}, tmp_path / "mapping.pt")
    with pytest.raises(WeightFileError, match=r"not a plain state dict: entries \['epoch'\] are not tensors"):
        load_mapper(tmp_path / "mapping.pt")


def test_deep3dfacerecon_checkpoint_as_msid_or_mapper_is_named(tmp_path):
    """epoch_20.pth (a training checkpoint: net_recon beside the optimizer state) picked in the wrong slot."""
    path = synthetic_deep3d.write_published_checkpoint(tmp_path / "epoch_20.pth")
    for load in (load_msid, load_mapper):
        with pytest.raises(
            WeightFileError,
            match=r"epoch_20\.pth is a Deep3DFaceRecon expression model \(a training checkpoint "
            r"holding it as 'net_recon'\)",
        ):
            load(path)


def test_mapper_from_a_plain_msid_file_says_it_needs_a_combined_file(official_checkpoints):
    msid_path, _ = official_checkpoints
    for mapper in (None, msid_path):
        with pytest.raises(
            WeightFileError,
            match=r"msid\.pt holds only the F2D MSID encoder \(msid\.pt\), so the mapper cannot be "
            r"read from it: .* only with a combined \.safetensors made by the converter",
        ):
            load_f2d_models(msid_path, mapper)


def test_swapped_files_name_what_they_are(official_checkpoints):
    msid_path, mapping_path = official_checkpoints
    with pytest.raises(WeightFileError, match=r"msid\.pt is not the F2D mapper.*looks like the F2D MSID encoder"):
        load_mapper(msid_path)
    with pytest.raises(WeightFileError, match=r"mapping\.pt is not the F2D MSID encoder.*looks like the F2D mapper"):
        load_msid(mapping_path)


@pytest.mark.parametrize(
    ("keys", "guess"),
    [
        (["image_proj.proj.weight", "ip_adapter.1.to_k_ip.weight"], "an IP-Adapter model"),
        (["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"], "an SDXL checkpoint"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "a Stable Diffusion checkpoint"),
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "a LoRA"),
    ],
)
def test_other_models_weights_are_named(tmp_path, keys, guess):
    path = tmp_path / "wrong.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(WeightFileError, match=rf"wrong\.safetensors is not the F2D mapper.*looks like {guess}"):
        load_mapper(path)


def test_wrong_shapes_and_missing_keys_are_listed(tmp_path, state_dicts):
    sd = dict(state_dicts[1])
    sd["i2t_first.fc_out.weight"] = torch.zeros(1024, 1536)
    del sd["null_exp"]
    path = tmp_path / "mapping.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightFileError) as info:
        load_mapper(path)
    message = str(info.value)
    assert "1 missing keys (null_exp)" in message
    assert "i2t_first.fc_out.weight (1024, 1536) (expected (768, 1536))" in message


def test_combined_file_without_the_part_asked_for(tmp_path, state_dicts):
    path = tmp_path / "mapper_only.safetensors"
    save_file({f"mapper.{k}": v for k, v in state_dicts[1].items()}, str(path), {"format": "face2diffusion"})
    assert _same_parameters(load_mapper(path), state_dicts[1])
    with pytest.raises(WeightFileError, match="without the MSID encoder"):
        load_msid(path)
    assert set(load_file(str(path))) == {f"mapper.{k}" for k in state_dicts[1]}
