"""Deep3DFaceRecon expression model: published checkpoint format, file errors, crop numerics, real photos."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from f2d_core.errors import F2DError, NoFaceError, WeightFileError
from f2d_core.faces.expression_alignment import DEEP3D_LM3D_5, crop_placement, deep3d_crops
from f2d_core.faces.expression_model import (
    COEFFICIENT_GROUPS,
    ExpressionRegressor,
    expression_codes,
    load_expression_model,
)
from tests.support.photos import ASTRONAUT, GROUP, load_rgb
from tests.support.synthetic_deep3d import (
    net_recon_shapes,
    net_recon_state_dict,
    write_published_checkpoint,
    write_safetensors_checkpoint,
)


@pytest.fixture(scope="module")
def net_recon() -> dict[str, torch.Tensor]:
    """The synthetic `net_recon` tensors (seed 0)."""
    return net_recon_state_dict(seed=0)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`epoch_20.pth` in the published format, seed 0."""
    return write_published_checkpoint(tmp_path_factory.mktemp("deep3d") / "epoch_20.pth", seed=0)


@pytest.fixture(scope="module")
def model(published: Path) -> ExpressionRegressor:
    return load_expression_model(published)


@pytest.fixture(scope="module")
def faces(expected) -> tuple[list[np.ndarray], np.ndarray]:
    """The astronaut and the first face of the group photo, with the fixture's 5 landmarks."""
    return [load_rgb(ASTRONAUT), load_rgb(GROUP)], expected["lm5"][:2]


# --- the published checkpoint ---------------------------------------------------------------------


def test_published_file_has_the_official_layout(published, net_recon):
    raw = torch.load(published, weights_only=True, map_location="cpu")
    assert set(raw) == {"net_recon", "opt_00", "sched_00"}
    assert [(k, tuple(v.shape)) for k, v in raw["net_recon"].items()] == net_recon_shapes()
    assert len(raw["net_recon"]) == 332
    n_params = sum(not k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in net_recon)
    assert len(raw["opt_00"]["state"]) == n_params == 173  # Adam over net_recon.parameters()


def test_published_checkpoint_loads_every_tensor(model, net_recon):
    state = model.state_dict()
    assert list(state) == [k for k, _ in net_recon_shapes()]
    for key, value in net_recon.items():
        assert torch.equal(state[key], value), key
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("prefix", ["", "face_3drecon."])
def test_safetensors_load_the_same_weights(tmp_path, model, prefix):
    path = write_safetensors_checkpoint(tmp_path / "deep3d.safetensors", seed=0, prefix=prefix)
    loaded = load_expression_model(path)
    for (key, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), key


def test_plain_state_dict_saved_from_ddp_loads(tmp_path, model, net_recon):
    path = tmp_path / "net_recon.pth"
    torch.save({f"module.{k}": v for k, v in net_recon.items()}, path)
    assert torch.equal(load_expression_model(path).final_layers[1].weight, model.final_layers[1].weight)


# --- errors that name the file and say what to do ---------------------------------------------------


def _message(path: Path) -> str:
    with pytest.raises(WeightFileError) as info:
        load_expression_model(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file_says_where_it_goes(tmp_path):
    message = _message(tmp_path / "epoch_20.pth")
    assert "does not exist" in message
    assert "models/face2diffusion/" in message and "epoch_20.pth" in message


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5])
def test_truncated_pth_is_reported(tmp_path, published, fraction):
    data = published.read_bytes()
    path = tmp_path / "epoch_20.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert "truncated" in _message(path)


def test_truncated_safetensors_is_reported(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file({"final_layers.0.bias": torch.zeros(80)}, str(full))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:-100])
    assert "truncated" in _message(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_options.pth"
    torch.save({"net_recon": {"final_layers.0.bias": torch.zeros(80)}, "opt": argparse.Namespace(lr=1e-4)}, path)
    message = _message(path)
    assert "pickled Python objects (argparse.Namespace)" in message
    assert "never unpickles" in message


def test_another_models_weights_are_named(official_checkpoints):
    msid, mapping = official_checkpoints
    assert "MSID encoder (msid.pt)" in _message(msid)
    assert "mapper (mapping.pt)" in _message(mapping)


def test_imagenet_resnet_is_named(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, path)
    assert "ImageNet ResNet classifier" in _message(path)


def test_not_a_dict_is_reported(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    assert "holds Tensor, not a dict of tensors" in _message(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path, net_recon):
    broken = dict(net_recon)
    del broken["final_layers.1.bias"]
    broken["backbone.fc.weight"] = torch.zeros(257, 2048)
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": broken}, path)
    message = _message(path)
    assert "1 missing keys (final_layers.1.bias)" in message
    assert "1 unexpected keys (backbone.fc.weight)" in message


def test_wrong_shapes_are_listed(tmp_path, net_recon):
    path = tmp_path / "resnet18_head.safetensors"
    save_file({**net_recon, "final_layers.1.weight": torch.zeros(64, 512, 1, 1)}, str(path))
    message = _message(path)
    assert "1 tensors of the wrong shape (final_layers.1.weight (64, 512, 1, 1) (expected (64, 2048, 1, 1)))" in message


# --- the network ------------------------------------------------------------------------------------


def test_heads_are_concatenated_in_the_official_order(model):
    """id 80, exp 64, tex 80, angle 3, gamma 27, txy 2, tz 1: head i's bias shows up in its slice."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        for index, head in enumerate(net.final_layers):
            head.weight.zero_()
            head.bias.fill_(index + 1.0)
        crops = torch.rand(2, 3, 64, 64)  # any size works after global pooling; small is fast
        coefficients, expression = net.coefficients(crops), net.expression(crops)
    layout = torch.cat([torch.full((n,), i + 1.0) for i, (_, n) in enumerate(COEFFICIENT_GROUPS)])
    assert coefficients.shape == (2, 257) and expression.shape == (2, 64)
    assert torch.equal(coefficients, layout.expand(2, -1))
    assert torch.equal(expression, torch.full((2, 64), 2.0))


def _reference_resnet50(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3) + ReconNetWrapper heads, written out functionally."""

    def bn(name: str, y: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            y, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"]
        )

    y = F.relu(bn("backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3)))
    y = F.max_pool2d(y, 3, stride=2, padding=1)
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(blocks):
            p = f"backbone.layer{stage}.{block}"
            stride = 2 if block == 0 and stage > 1 else 1
            out = F.relu(bn(f"{p}.bn1", F.conv2d(y, sd[f"{p}.conv1.weight"])))
            out = F.relu(bn(f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)))
            out = bn(f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            if block == 0:
                y = bn(f"{p}.downsample.1", F.conv2d(y, sd[f"{p}.downsample.0.weight"], stride=stride))
            y = F.relu(out + y)
    pooled = y.mean(dim=(2, 3), keepdim=True)
    heads = [F.conv2d(pooled, sd[f"final_layers.{i}.weight"], sd[f"final_layers.{i}.bias"]) for i in range(7)]
    return torch.cat(heads, dim=1).flatten(1)


def test_regressor_computes_the_official_resnet50(model, net_recon, faces):
    photos, lm5 = faces
    crops = deep3d_crops(photos[:1], lm5[:1])
    with torch.no_grad():
        ours, reference = model.coefficients(crops), _reference_resnet50(net_recon, crops)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.expression(crops), ours[:, 80:144])


# --- the crop, against a numpy + PIL re-derivation of Deep3DFaceRecon's align_img -------------------


def _reference_crop(rgb: np.ndarray, lm5: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`align_img` as test.py calls it: uint8 [224, 224, 3] and (resized w, h, left, top)."""
    h0, w0 = rgb.shape[:2]
    lm = lm5.astype(np.float32).copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]  # test.py flips y before align_img
    x3d = DEEP3D_LM3D_5.numpy().astype(np.float64)
    a = np.zeros((10, 8))  # POS: rows alternate x (R1, tx) and y (R2, ty) equations
    a[0::2, 0:3], a[0::2, 3], a[1::2, 4:7], a[1::2, 7] = x3d, 1, x3d, 1
    k = np.linalg.lstsq(a, lm.reshape(10).astype(np.float64), rcond=None)[0]
    s = 102.0 / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    tx, ty = k[3], k[7]
    w, h = int(w0 * s), int(h0 * s)  # numpy astype(int32): truncation
    left, top = int(w / 2 - 112 + (tx - w0 / 2) * s), int(h / 2 - 112 + (h0 / 2 - ty) * s)
    resized = Image.fromarray(rgb).resize((w, h), resample=Image.Resampling.BICUBIC)
    return np.array(resized.crop((left, top, left + 224, top + 224))), (w, h, left, top)


def _photo(source: str, scale: float) -> np.ndarray:
    rgb = load_rgb(source)
    if scale == 1.0:
        return rgb
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return np.asarray(Image.fromarray(rgb).resize(size, resample=Image.Resampling.BILINEAR))


@pytest.mark.parametrize(
    ("index", "scale", "shift"),
    [
        (0, 1.0, (0.0, 0.0)),  # astronaut: the face is enlarged (s = 1.53)
        (0, 0.37, (0.0, 0.0)),  # small photo: s = 4.1
        (0, 2.3, (0.0, 0.0)),  # large photo: shrunk (s = 0.67), PIL's widened filter
        (0, 1.0, (-150.0, 95.0)),  # face moved out over the left/bottom edge: black border
        (1, 1.0, (0.0, 0.0)),  # group photo, 1280x886
        (4, 1.0, (0.0, 0.0)),
        (6, 2.3, (0.0, 0.0)),
    ],
)
def test_crop_is_bit_exact_against_align_img(expected, index, scale, shift):
    rgb = _photo(expected["sources"][index], scale)
    lm5 = (expected["lm5"][index] * scale + np.array(shift)).astype(np.float32)
    reference, geometry = _reference_crop(rgb, lm5)
    place = crop_placement(lm5[None], [rgb.shape[:2]])
    assert (*place.resized_size[0].tolist(), *place.origin[0].tolist()) == geometry
    crop = deep3d_crops([rgb], lm5[None])[0]
    # Bound reached: every pixel equal to PIL's uint8 output; the float crop is that / 255 in float32.
    assert torch.equal(torch.round(crop * 255).to(torch.uint8).permute(1, 2, 0), torch.from_numpy(reference))
    assert float((crop.double() - torch.from_numpy(reference / 255.0).permute(2, 0, 1)).abs().max()) < 1e-7


def test_crop_accepts_batches_lists_and_comfy_floats(faces):
    photos, lm5 = faces
    from_list = deep3d_crops(photos, lm5)
    assert from_list.shape == (2, 3, 224, 224) and from_list.dtype == torch.float32
    same_photo = torch.from_numpy(np.stack([photos[0], photos[0]]))
    as_uint8_batch = deep3d_crops(same_photo, np.stack([lm5[0], lm5[0]]))
    as_float_batch = deep3d_crops(same_photo.float() / 255, torch.from_numpy(np.stack([lm5[0], lm5[0]])))
    assert torch.equal(as_uint8_batch[0], from_list[0]) and torch.equal(as_float_batch, as_uint8_batch)


def test_crop_outside_the_photo_is_black(faces):
    photos, lm5 = faces
    assert torch.count_nonzero(deep3d_crops(photos[:1], lm5[:1] + 5000.0)) == 0


def test_degenerate_landmarks_raise(faces):
    photos, _ = faces
    for lm5 in (np.full((1, 5, 2), 100.0), np.full((1, 5, 2), np.nan)):
        with pytest.raises(NoFaceError, match="image 1 of 1"):
            deep3d_crops(photos[:1], lm5)
    with pytest.raises(F2DError, match=r"expected \[1, 5, 2\]"):
        deep3d_crops(photos[:1], np.zeros((1, 68, 2)))


# --- end to end on real photos ----------------------------------------------------------------------


def test_real_photos_end_to_end(model, faces):
    photos, lm5 = faces
    singles = [expression_codes(model, [photo], lm[None]) for photo, lm in zip(photos, lm5, strict=True)]
    batch = expression_codes(model, photos, lm5)
    assert batch.shape == (2, 64) and torch.isfinite(batch).all()
    assert torch.equal(expression_codes(model, photos[:1], lm5[:1]), singles[0])  # deterministic
    torch.testing.assert_close(batch, torch.cat(singles), atol=1e-6, rtol=1e-5)  # batch of 2 == two singles
    assert (singles[0] - singles[1]).abs().max() > 1e-3  # the face matters
