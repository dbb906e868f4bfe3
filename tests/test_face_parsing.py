"""BiSeNet face parsing: published-format loading, every load error, labels, the CGDR face mask."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from skimage import data as skdata

from f2d_core.errors import WeightFileError
from f2d_core.faces.face_parsing import (
    CELEBAMASK_HQ_CLASSES,
    FACE_CLASSES,
    BiSeNet,
    FaceParser,
    FaceParsingInputError,
    downsample_mask,
    load_face_parser,
)
from tests.support import synthetic_bisenet as sb

SMALL = 64  # input_size for the fast tests; the published 512 runs once, on the astronaut


def _photo(array) -> torch.Tensor:
    """uint8 [H,W,3] -> float [1,3,H,W] in 0..1."""
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def state() -> OrderedDict[str, torch.Tensor]:
    return sb.synthetic_state_dict(seed=0)


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory) -> Path:
    return sb.write_checkpoint(tmp_path_factory.mktemp("fp") / "79999_iter.pth", state)


@pytest.fixture(scope="module")
def parser(checkpoint) -> FaceParser:
    return load_face_parser(checkpoint, input_size=SMALL)


@pytest.fixture(scope="module")
def rig(state) -> FaceParser:
    """A parser whose winning class each test sets with `_set_winner`."""
    net = BiSeNet()
    net.load_state_dict(state)
    return FaceParser(net, input_size=32)


def _set_winner(parser: FaceParser, index: int, state) -> None:
    rigged = sb.rig_class(state, index)
    head = parser.bisenet.conv_out
    head.conv.bn.weight.copy_(rigged["conv_out.conv.bn.weight"])
    head.conv.bn.bias.copy_(rigged["conv_out.conv.bn.bias"])
    head.conv_out.weight.copy_(rigged["conv_out.conv_out.weight"])


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return _photo(skdata.astronaut())


# --- the published format -----------------------------------------------------------------------


def test_network_keys_match_the_published_checkpoint():
    got = [(k, tuple(v.shape)) for k, v in BiSeNet().state_dict().items()]
    assert got == sb.published_layout()
    assert len(got) == 191


def test_label_order_and_face_classes_are_pinned():
    assert CELEBAMASK_HQ_CLASSES == (
        "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
        "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
    )  # fmt: skip
    assert dict(FACE_CLASSES) == {
        "skin": 1, "l_brow": 2, "r_brow": 3, "l_eye": 4, "r_eye": 5, "eye_g": 6,
        "l_ear": 7, "r_ear": 8, "nose": 10, "mouth": 11, "u_lip": 12, "l_lip": 13,
    }  # fmt: skip
    with pytest.raises(TypeError):
        FACE_CLASSES["hair"] = 17  # read-only


@pytest.mark.parametrize("fmt,name", [("legacy", "79999_iter.pth"), ("zip", "bisenet.pth"),
                                      ("safetensors", "bisenet.safetensors")])  # fmt: skip
def test_loads_every_format_with_the_file_weights(fmt, name, state, tmp_path):
    path = sb.write_checkpoint(tmp_path / name, state, fmt)
    parser = load_face_parser(path)
    loaded = parser.bisenet.state_dict()
    for key in ("cp.resnet.conv1.weight", "cp.arm32.bn_atten.running_var", "conv_out.conv_out.weight"):
        assert torch.equal(loaded[key], state[key])
    assert not parser.training and parser.input_size == 512
    assert not any(p.requires_grad for p in parser.parameters())


def test_facexlibs_parsing_bisenet_mirror_loads_under_the_published_name_or_its_own(state, tmp_path):
    """facexlib's parsing_bisenet.pth (release v0.2.0), the mirror of 79999_iter.pth: facexlib's
    parsing/bisenet.py and resnet.py (read at commit 260620a) declare the same modules under the same names
    (cp.resnet.conv1/bn1/layerN.M.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}, cp.arm16/arm32.{conv,
    conv_atten,bn_atten}, cp.conv_head32/16, cp.conv_avg, ffm.{convblk,conv1,conv2}, conv_out/16/32.{conv,
    conv_out}) and its init_parsing_model loads the file as a plain state dict, strictly (no wrapping key);
    saved by a newer torch: the zip format. Whether its bytes equal the original's is unknown."""
    for name in ("parsing_bisenet.pth", "79999_iter.pth"):
        path = sb.write_checkpoint(tmp_path / name, state, "zip")
        loaded = load_face_parser(path).bisenet.state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_loads_dataparallel_prefix_and_missing_step_counters(state, tmp_path):
    sd = {"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    parser = load_face_parser(sb.write_checkpoint(tmp_path / "dp.pth", sd))
    assert torch.equal(parser.bisenet.state_dict()["ffm.conv2.weight"], state["ffm.conv2.weight"])


def test_rigged_checkpoint_through_the_loader_gives_a_full_mask(state, tmp_path):
    path = sb.write_checkpoint(tmp_path / "skin.pth", sb.rig_class(state, 1))
    parser = load_face_parser(path, input_size=32)
    images = torch.rand(1, 3, 40, 48)
    assert torch.equal(parser.parse(images), torch.ones(1, 40, 48, dtype=torch.int64))
    assert torch.equal(parser.face_mask(images), torch.ones(1, 1, 40, 48))


# --- load errors ----------------------------------------------------------------------------------


class _MakesADirectory:
    """Unpickling this would create a directory: proof that nothing was executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def test_missing_file_says_where_it_goes(tmp_path):
    with pytest.raises(WeightFileError) as err:
        load_face_parser(tmp_path / "79999_iter.pth")
    msg = str(err.value)
    assert "79999_iter.pth" in msg and "not found" in msg and "models/face2diffusion/" in msg


@pytest.mark.parametrize("fmt,name", [("legacy", "a.pth"), ("zip", "b.pth"), ("safetensors", "c.safetensors")])
def test_truncated_file(fmt, name, state, tmp_path):
    path = _truncate(sb.write_checkpoint(tmp_path / name, state, fmt))
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    assert name in str(err.value) and "truncated" in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightFileError, match="truncated") as err:
        load_face_parser(path)
    assert "empty.pth" in str(err.value)


def test_pickle_with_python_objects_is_refused_without_running_it(tmp_path):
    path, target = tmp_path / "model.pth", tmp_path / "was_executed"
    torch.save({"net": _MakesADirectory(target)}, path)
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    assert "model.pth" in str(err.value) and "Python objects" in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize(
    "payload,words",
    [([torch.zeros(2)], "holds list, not a dict of tensors"), ({"w": torch.zeros(2), "epoch": 3}, "not tensors")],
)
def test_pickle_that_is_not_a_state_dict(payload, words, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(WeightFileError, match=words) as err:
        load_face_parser(path)
    assert "odd.pth" in str(err.value)


def test_another_models_weights_are_named(tmp_path):
    path = tmp_path / "msid.pt"
    torch.save({"norms.layer_0.weight": torch.ones(384), "blocks.0.attn.qkv.weight": torch.ones(3, 3)}, path)
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    msg = str(err.value)
    assert "msid.pt" in msg and "not a BiSeNet face-parsing model" in msg and "MSID encoder" in msg


def test_missing_keys_are_listed(state, tmp_path):
    sd = {k: v for k, v in state.items() if not k.startswith("conv_out32.")}
    path = sb.write_checkpoint(tmp_path / "partial.pth", sd)
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    msg = str(err.value)
    assert "partial.pth" in msg and "6 missing keys" in msg and "conv_out32.conv.conv.weight" in msg


def test_unexpected_keys_are_listed(state, tmp_path):
    sd = dict(state) | {"sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)}  # the deleted spatial path
    path = sb.write_checkpoint(tmp_path / "extra.pth", sd)
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    assert "extra.pth" in str(err.value) and "1 unexpected keys" in str(err.value)
    assert "sp.conv1.conv.weight" in str(err.value)


def test_wrong_shapes_are_named(state, tmp_path):
    sd = dict(state) | {"ffm.conv1.weight": torch.zeros(32, 256, 1, 1)}
    path = sb.write_checkpoint(tmp_path / "shape.pth", sd)
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    msg = str(err.value)
    assert "shape.pth" in msg and "ffm.conv1.weight" in msg and "(32, 256, 1, 1)" in msg and "(64, 256, 1, 1)" in msg


def test_another_class_count_is_explained(tmp_path):
    path = sb.write_checkpoint(tmp_path / "parser11.pth", sb.synthetic_state_dict(n_classes=11))
    with pytest.raises(WeightFileError) as err:
        load_face_parser(path)
    msg = str(err.value)
    assert "parser11.pth" in msg and "11 classes" in msg and "19 CelebAMask-HQ classes" in msg


# --- labels and masks -----------------------------------------------------------------------------


def test_output_shapes_dtypes_and_binary_mask(parser):
    images = torch.rand(2, 3, 72, 56)
    assert parser.logits(images).shape == (2, 19, 72, 56)
    labels = parser.parse(images)
    assert labels.shape == (2, 72, 56) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 19
    for dtype in (torch.float32, torch.float64, torch.float16):
        mask = parser.face_mask(images.to(dtype))
        assert mask.shape == (2, 1, 72, 56) and mask.dtype == dtype
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert parser.face_mask(images, size=8).shape == (2, 1, 8, 8)
    assert parser.face_mask(images, size=(9, 7)).shape == (2, 1, 9, 7)


def test_mask_is_the_label_membership(parser):
    images = torch.rand(1, 3, 64, 64)
    labels = parser.parse(images)
    for classes in (FACE_CLASSES, ["r_eye"], [4, 10], ("background", "hair")):
        ids = [CELEBAMASK_HQ_CLASSES.index(c) if isinstance(c, str) else c for c in classes]
        want = torch.isin(labels, torch.tensor(ids)).float()[:, None]
        assert torch.equal(parser.face_mask(images, classes), want)


@pytest.mark.parametrize("index", range(19))
def test_class_set_selection_pins_the_class_mapping(rig, state, index):
    _set_winner(rig, index, state)
    images = torch.rand(2, 3, 48, 40)
    assert torch.equal(rig.parse(images), torch.full((2, 48, 40), index))
    name = CELEBAMASK_HQ_CLASSES[index]
    face = torch.full((2, 1, 48, 40), float(name in FACE_CLASSES))
    assert torch.equal(rig.face_mask(images), face)
    assert torch.equal(rig.face_mask(images, classes=[name]), torch.ones(2, 1, 48, 40))
    assert torch.equal(rig.face_mask(images, classes=[index]), torch.ones(2, 1, 48, 40))
    others = [c for c in CELEBAMASK_HQ_CLASSES if c != name]
    assert torch.equal(rig.face_mask(images, classes=others, size=6), torch.zeros(2, 1, 6, 6))


def test_resize_rule_is_an_area_majority_vote():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, :4, :8] = 1  # top-left 8x8 cell: exactly half face -> face
    mask[0, 0, :8, 8:] = 1  # top-right cell: all face
    mask[0, 0, 8:11, 8:] = 1
    mask[0, 0, 11, 8:15] = 1  # bottom-right cell: 24 + 7 = 31 of 64 -> not face
    mask[0, 0, 15, 0] = 1  # bottom-left cell: one stray pixel -> not face (max-pool would say face)
    assert torch.equal(downsample_mask(mask, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))


def test_resize_rule_handles_uneven_ratios_and_keeps_dtype():
    full = torch.ones(2, 1, 50, 70, dtype=torch.float16)
    out = downsample_mask(full, (7, 9))
    assert out.dtype == torch.float16 and torch.equal(out, torch.ones(2, 1, 7, 9, dtype=torch.float16))
    assert torch.equal(downsample_mask(torch.zeros(1, 1, 50, 70), 3), torch.zeros(1, 1, 3, 3))


def test_face_mask_size_applies_the_resize_rule(parser):
    images = torch.rand(1, 3, 96, 96)
    full = parser.face_mask(images, classes=["r_eye"])
    assert 0 < full.mean() < 1  # a mixed mask, so the rule matters
    assert torch.equal(parser.face_mask(images, classes=["r_eye"], size=12), downsample_mask(full, 12))


def test_batch_of_two_equals_two_singles(parser, astronaut):
    cat = _photo(skdata.chelsea())[..., 20:276:2, 100:356:2]
    face = astronaut[..., :256:2, 128:384:2]
    pair = torch.cat([face, cat])
    torch.testing.assert_close(
        parser.logits(pair), torch.cat([parser.logits(face), parser.logits(cat)]), rtol=1e-4, atol=1e-3
    )
    logits = parser.logits(pair)
    top2 = logits.topk(2, dim=1).values
    decided = top2[:, 0] - top2[:, 1] > 1e-2  # leave out near-ties that float rounding may flip
    assert decided.float().mean() > 0.99
    singles = torch.cat([parser.parse(face), parser.parse(cat)])
    assert torch.equal(parser.parse(pair)[decided], singles[decided])
    assert not torch.equal(parser.parse(face), parser.parse(cat))


def test_real_photo_at_the_published_size(checkpoint, astronaut):
    parser = load_face_parser(checkpoint)  # input_size 512, as the published model is used
    logits = parser.logits(astronaut)
    assert logits.shape == (1, 19, 512, 512) and torch.isfinite(logits).all()
    labels = logits.argmax(dim=1)
    assert torch.equal(parser.parse(astronaut), labels)
    latent = parser.face_mask(astronaut, size=64)
    assert latent.shape == (1, 1, 64, 64) and set(latent.unique().tolist()) <= {0.0, 1.0}


def test_other_dtypes_and_frozen_state(checkpoint):
    parser = load_face_parser(checkpoint, input_size=SMALL).to(torch.bfloat16)
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    mask = parser.face_mask(images)
    assert mask.dtype == torch.float32 and not mask.requires_grad
    assert parser.parse(images).shape == (2, 40, 40)
    parser.train()
    assert not parser.training and not parser.bisenet.training


# --- input errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images,words",
    [
        (torch.rand(1, 64, 64, 3), "IMAGE layout"),
        (torch.rand(3, 64, 64), "[B,3,H,W]"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "divide by 255"),
        (torch.rand(1, 3, 8, 8) * 255, "divide 0..255"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, "(x + 1) / 2"),
    ],
)
def test_bad_images_are_explained(parser, images, words):
    with pytest.raises(FaceParsingInputError) as err:
        parser.face_mask(images)
    assert words in str(err.value) and "images" in str(err.value)


@pytest.mark.parametrize("classes,words", [(["face"], "unknown"), ([19], "index 0..18"), ([], "empty")])
def test_bad_class_sets_are_explained(parser, classes, words):
    with pytest.raises(FaceParsingInputError, match=words):
        parser.face_mask(torch.rand(1, 3, 8, 8), classes=classes)


def test_antialiased_resize_runs_on_the_cpu_whatever_the_parsers_device(monkeypatch):
    """Apple's MPS has no antialiased bilinear kernel before torch 2.7 (pytorch/pytorch#145526): the input
    resize must run on the CPU, the network on its own device (here "meta", a real non-CPU device)."""
    import f2d_core.faces.face_parsing as face_parsing

    antialiased_on = []
    interpolate = face_parsing.F.interpolate

    def spy(x, *args, **kwargs):
        if kwargs.get("antialias"):
            antialiased_on.append(x.device.type)
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(face_parsing.F, "interpolate", spy)
    with torch.device("meta"):
        parser = FaceParser(BiSeNet(), input_size=32)
    logits = parser._features(torch.rand(1, 3, 48, 40))
    assert antialiased_on == ["cpu"]
    assert logits.device.type == "meta" and logits.dtype == torch.float32
