"""prepare_dataset: a folder of photos -> the cached CGDR training set (shapes, views, masks, report, cache, errors).

Faces are squares the synthetic insightface detector finds, carrying real photo texture; the F2D encoder
runs on the formula weights, masks come from the synthetic BiSeNet, expressions from the synthetic
Deep3D. `encode_latents` is the caller's VAE, a black box to prepare_dataset: here an 8x average pool
to 4 channels, which commutes with a horizontal flip, so the flipped view's latents are checkable.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from f2d_core.errors import DatasetError, F2DError
from f2d_core.faces.expression_model import expression_codes, load_expression_model
from f2d_core.faces.face_detection import FaceDetector
from f2d_core.faces.face_parsing import load_face_parser
from f2d_core.training.data.dataset import (
    PreparationStopped,
    TrainingSet,
    open_training_set,
    prepare_dataset,
    prepare_share,
)
from f2d_core.training.data.ffhq_crop import ffhq_crop, ffhq_matrix, mirror_landmarks, shrink_factor, source_side
from f2d_core.training.data.files import decode_photo
from f2d_core.training.run_identity import dataset_digest, names_only_dataset_digest
from tests.support import synthetic_bisenet, synthetic_deep3d
from tests.support import synthetic_insightface as si
from tests.support.photos import ASTRONAUT, CAT, load_rgb

SIZE = 128  # crop size: latents and masks are 16 x 16
PHOTO = (320, 320)  # detected at det_size 320: a square of side 128 (or 64) centred on a multiple of 32
USABLE = ["a.png", "alice/1.png", "alice/2.png", "b.jpg", "bob/1.png"]
IMAGE_FILES = sorted([*USABLE, "broken.jpg", "half.png", "night.png"])  # the files a mask list follows
FP16 = 5e-4  # latents are stored as float16: half a unit in the last place of values in 0..1


def _face(texture: str, centre: tuple[int, int] = (160, 160), side: int = 128, shade: int = 0) -> np.ndarray:
    """A red square the synthetic detector finds, with a real photo's texture in green and blue."""
    return si.face_photo(load_rgb(texture), PHOTO, centre, side, shade)


def _save(path: Path, image: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)


def _write_folder(root: Path) -> Path:
    """5 usable photos (2 loose, alice x2, bob), a corrupt jpg, a truncated png, a faceless photo, text, a subfolder."""
    _save(root / "a.png", _face(ASTRONAUT))
    _save(root / "b.jpg", _face(CAT, centre=(128, 192)), quality=95)
    _save(root / "alice" / "1.png", _face(ASTRONAUT, centre=(192, 160), shade=30))
    _save(root / "alice" / "2.png", _face(CAT, side=64, centre=(160, 144)))
    _save(root / "bob" / "1.png", _face("skimage/data/coffee.png"))
    _save(root / "alice" / "old" / "x.png", _face(ASTRONAUT))
    (root / "broken.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(_face(ASTRONAUT)).save(buffer, format="PNG")
    (root / "half.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    _save(root / "night.png", (_face(CAT) // 8))  # dim: no bright square, no face
    (root / "notes.txt").write_text("not a photo")
    return root


def stand_in_vae(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, 4, S/8, S/8]: the three pooled colours and their mean."""
    pooled = F.avg_pool2d(images, 8)
    return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)


class CountingVAE:
    """The stand-in VAE, counting the images it encodes."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        return stand_in_vae(images)


class CountingDetector:
    """A detector that counts `detect` calls and stops the run (via should_stop) when told."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner, self.calls = inner, 0

    def detect(self, image, label: str = "image"):
        self.calls += 1
        return self.inner.detect(image, label)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """3 usable photos (a.png, alice/1.png, bob/1.png), a corrupt jpg and a faceless photo: for the cache tests."""
    root = tmp_path_factory.mktemp("small")
    _save(root / "a.png", _face(ASTRONAUT))
    _save(root / "alice" / "1.png", _face(CAT, centre=(192, 160)))
    _save(root / "bob" / "1.png", _face("skimage/data/coffee.png"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    _save(root / "night.png", np.zeros(PHOTO, np.uint8))
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> FaceDetector:
    root = tmp_path_factory.mktemp("insightface")
    si.write_synthetic_pack(root, "pack")
    return FaceDetector(root, "pack", det_size=320, retry_det_size=None)


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    path = synthetic_bisenet.write_checkpoint(tmp_path_factory.mktemp("bisenet") / "79999_iter.pth")
    return load_face_parser(path, input_size=64)


@pytest.fixture(scope="module")
def expression_model(tmp_path_factory):
    path = synthetic_deep3d.write_safetensors_checkpoint(tmp_path_factory.mktemp("deep3d") / "deep3d.safetensors")
    return load_expression_model(path)


def _prepare(folder: Path, encoder, detector, cache: Path | None, **kwargs) -> TrainingSet:
    kwargs.setdefault("encode_latents", stand_in_vae)
    kwargs.setdefault("latent_key", "stand-in-vae")
    return prepare_dataset(folder, encoder, detector, cache_dir=cache, crop_size=SIZE, **kwargs)


PROGRESS: list[tuple[int, int]] = []


@pytest.fixture(scope="module")
def full(folder, encoder, detector, parser, expression_model, tmp_path_factory) -> TrainingSet:
    """The folder with the parser's masks and expression codes (progress calls recorded in PROGRESS)."""
    cache = tmp_path_factory.mktemp("cache")
    PROGRESS.clear()
    return _prepare(
        folder, encoder, detector, cache, face_parser=parser, expression_model=expression_model,
        progress=lambda done, total: PROGRESS.append((done, total)),
    )  # fmt: skip


def _photo_and_kps(folder: Path, name: str, detector) -> tuple[np.ndarray, torch.Tensor]:
    rgb = np.array(Image.open(folder / name).convert("RGB"))
    return rgb, torch.from_numpy(detector.detect(rgb)[0].kps)[None]


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


# --- what a prepared set holds ----------------------------------------------------------------------


def test_shapes_files_and_persons(full):
    assert len(full) == 5 and full.files == USABLE
    assert full.person == ["", "alice", "alice", "", "bob"]
    assert full.idvec.shape == (5, 2, 1536) and full.expression.shape == (5, 2, 64)
    assert full.latents.shape == (5, 2, 4, 16, 16) and full.masks.shape == (5, 2, 1, 16, 16)
    assert not full.idvec.is_inference() and full.idvec.dtype == torch.float32
    assert (full.latents.dtype, full.masks.dtype) == (torch.float16, torch.uint8)  # the shared, compact layout
    assert set(full.masks.unique().tolist()) == {0, 1}
    assert full.settings["crop_size"] == SIZE and full.settings["views"] == 2


def test_report_counts_reasons_and_texts(full):
    report = full.report
    assert report.total_files == 10 and report.used == USABLE
    assert report.counts() == {"not_image": 1, "unreadable": 2, "no_face": 1, "nested_folder": 1}
    assert report.files_for("unreadable") == ["broken.jpg", "half.png"]
    assert report.files_for("no_face") == ["night.png"] and report.files_for("not_image") == ["notes.txt"]
    assert report.files_for("nested_folder") == ["alice/old"]
    assert report.computed == 8 and report.from_cache == 0
    summary = report.summary()
    assert "5 of 10 files usable" in summary and "2 unreadable or truncated image (broken.jpg, half.png)" in summary
    assert "face parser" in summary and "Expression codes: yes" in summary
    data = json.loads(report.to_json())
    assert data["counts"]["unreadable"] == 2 and data["used"] == USABLE


def test_flip_view_is_the_mirror_image(full, folder, encoder, detector):
    torch.testing.assert_close(full.latents[:, 1], full.latents[:, 0].flip(-1))
    torch.testing.assert_close(full.masks[:, 1], full.masks[:, 0].flip(-1))
    rgb, kps = _photo_and_kps(folder, "a.png", detector)
    photo = _tensor(rgb)
    mirrored = encoder.identity(encoder.crops(photo.flip(-1), mirror_landmarks(kps, photo.shape[-1])))
    torch.testing.assert_close(full.idvec[0, 1], mirrored[0], atol=1e-4, rtol=0)
    assert not torch.allclose(full.idvec[0, 1], full.idvec[0, 0], atol=1e-2)


def test_latents_masks_and_codes_come_from_the_ffhq_crop(full, folder, encoder, detector, parser, expression_model):
    rgb, kps = _photo_and_kps(folder, "alice/1.png", detector)
    crop = ffhq_crop(_tensor(rgb), kps, SIZE).crops
    torch.testing.assert_close(full.latents[1, 0].float(), stand_in_vae(crop)[0], atol=FP16, rtol=0)
    torch.testing.assert_close(full.masks[1, 0].float(), parser.face_mask(crop, size=16)[0])
    torch.testing.assert_close(
        full.idvec[1, 0], encoder.identity(encoder.crops(_tensor(rgb), kps))[0], atol=1e-4, rtol=0
    )
    codes = expression_codes(expression_model, [rgb, rgb[:, ::-1]], torch.cat([kps, mirror_landmarks(kps, 320)]))
    torch.testing.assert_close(full.expression[1], codes, atol=1e-4, rtol=0)
    assert not torch.allclose(codes[0], codes[1], atol=1e-3)


def test_a_big_face_in_a_big_photo_is_cropped_as_from_the_whole_photo(encoder, detector, tmp_path):
    """Only the face's window of the photo is read: the box filter (3x here) and the warp must not notice."""
    image = si.square_image((640, 640), [(320, 320, 256, 255)])  # found at det_size 320 as a 128 square
    image[192:448, 192:448, 1:] = np.asarray(Image.fromarray(load_rgb(ASTRONAUT)).resize((256, 256)))[:, :, 1:]
    _save(tmp_path / "photos" / "big.png", image)
    result = _prepare(tmp_path / "photos", encoder, detector, None, flip=False)
    kps = torch.from_numpy(detector.detect(image)[0].kps)[None]
    crop = ffhq_crop(_tensor(image), kps, SIZE)
    assert shrink_factor(crop.matrix).tolist() == [3]  # 3 photo pixels per crop pixel
    torch.testing.assert_close(result.latents[0, 0].float(), stand_in_vae(crop.crops)[0], atol=FP16, rtol=0)


def test_photos_are_read_upright_by_their_exif_orientation(tmp_path):
    upright = _face(ASTRONAUT, centre=(96, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are turned 90 degrees counter-clockwise
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(upright).copy()).save(buffer, format="PNG", exif=exif)
    np.testing.assert_array_equal(decode_photo(buffer.getvalue()), upright)


def test_reference_index_is_another_photo_of_the_same_person(full):
    generator = torch.Generator().manual_seed(0)
    assert [full.reference_index(1, generator) for _ in range(5)] == [2] * 5  # alice/1 -> alice/2
    assert full.reference_index(2, generator) == 1
    assert full.reference_index(4, generator) == 4  # bob has one photo
    assert full.reference_index(0, generator) == 0 and full.reference_index(3, generator) == 3  # loose photos


# --- mask sources ----------------------------------------------------------------------------------


def test_mask_folder_is_carried_into_the_crop_and_flipped(folder, encoder, detector, tmp_path):
    masks = tmp_path / "masks"
    left = np.zeros(PHOTO, np.uint8)
    left[:, :160] = 255  # the photo's left half (a.png's face is centred at x = 160)
    _save(masks / "a.png", left)
    _save(masks / "alice" / "1.png", np.zeros((160, 160), np.uint8) + 255)  # half size: resized
    _save(masks / "alice" / "2.png", np.zeros((100, 320), np.uint8))  # another shape: unusable
    _save(masks / "bob" / "1.jpg", np.zeros(PHOTO, np.uint8) + 255)
    result = _prepare(folder, encoder, detector, None, mask_folder=masks)
    assert result.files == ["a.png", "alice/1.png", "bob/1.png"]
    assert result.report.files_for("mask_missing") == ["b.jpg", "broken.jpg", "half.png", "night.png"]
    assert result.report.files_for("mask_unusable") == ["alice/2.png"]
    expected = torch.zeros(16, 16, dtype=torch.uint8)
    expected[:, :8] = 1
    torch.testing.assert_close(result.masks[0, 0, 0], expected)
    torch.testing.assert_close(result.masks[0, 1, 0], expected.flip(-1))
    assert result.masks[1].sum() > 0.8 * 2 * 256  # all white, minus the crop's black border


def test_mask_list_follows_the_sorted_image_files(folder, encoder, detector):
    masks = [torch.zeros(PHOTO) for _ in IMAGE_FILES]
    masks[IMAGE_FILES.index("b.jpg")][:, 128:] = 1.0  # b.jpg's face is centred at x = 128
    result = _prepare(folder, encoder, detector, None, masks=masks, flip=False)
    b = result.files.index("b.jpg")
    assert result.masks.shape == (5, 1, 1, 16, 16)
    assert result.masks[b, 0, 0, :, 8:].all() and not result.masks[b, 0, 0, :, :8].any()
    assert result.masks.sum() == result.masks[b].sum()


def test_mask_list_of_the_wrong_count_or_size_is_an_error(folder, encoder, detector):
    with pytest.raises(DatasetError, match=r"7 masks were given for the 8 image files"):
        _prepare(folder, encoder, detector, None, masks=[torch.zeros(PHOTO)] * 7)
    wrong = [torch.zeros(PHOTO) for _ in IMAGE_FILES]
    wrong[0] = torch.zeros(100, 320)
    with pytest.raises(DatasetError, match=r"a\.png is 320x100 but the photo is 320x320"):
        _prepare(folder, encoder, detector, None, masks=wrong)


def test_without_a_mask_source_an_ellipse_is_used_and_said(folder, encoder, detector, caplog):
    with caplog.at_level(logging.WARNING):
        result = _prepare(folder, encoder, detector, None, flip=False)
    assert "landmark ellipse" in caplog.text and "landmark ellipse" in result.report.summary()
    mask = result.masks[0, 0, 0]
    assert mask[8, 7] == 1 and mask[0].sum() == 0 and mask[:, 0].sum() == 0  # face centre in, border out
    assert 0.15 < mask.float().mean() < 0.5
    assert "Expression codes: none" in result.report.summary() and result.expression is None


# --- the cache ------------------------------------------------------------------------------------


def _cached_run(folder, encoder, detector, cache, **kwargs) -> tuple[TrainingSet, CountingDetector, CountingVAE]:
    counting, vae = CountingDetector(detector), CountingVAE()
    return _prepare(folder, encoder, counting, cache, encode_latents=vae, **kwargs), counting, vae


def test_second_run_reads_everything_from_the_cache(small, encoder, detector, tmp_path):
    first, det1, vae1 = _cached_run(small, encoder, detector, tmp_path / "cache")
    assert det1.calls == 4 and vae1.images == 6  # 3 faces + night.png; 3 photos x 2 views
    second, det2, vae2 = _cached_run(small, encoder, detector, tmp_path / "cache")
    assert det2.calls == 0 and vae2.images == 0
    assert second.report.from_cache == 5 and second.report.computed == 0  # broken and night cached as skipped
    assert second.report.counts() == first.report.counts()
    for name in ("idvec", "latents", "masks"):
        assert torch.equal(getattr(second, name), getattr(first, name))


def test_a_changed_setting_recomputes(small, encoder, detector, tmp_path):
    _cached_run(small, encoder, detector, tmp_path / "cache")
    other, det, vae = _cached_run(small, encoder, detector, tmp_path / "cache", latent_key="another-vae")
    assert det.calls == 4 and vae.images == 6 and other.report.from_cache == 0
    unflipped, det, vae = _cached_run(small, encoder, detector, tmp_path / "cache", flip=False)
    assert vae.images == 3 and unflipped.latents.shape[1] == 1
    assert len(list((tmp_path / "cache").glob("*/settings.json"))) == 3


def test_an_edited_photo_recomputes_only_itself(small, encoder, detector, tmp_path):
    photos = shutil.copytree(small, tmp_path / "photos")
    before, _, _ = _cached_run(photos, encoder, detector, tmp_path / "cache")
    _save(photos / "alice" / "1.png", _face(ASTRONAUT, side=64, centre=(160, 144)))
    after, det, vae = _cached_run(photos, encoder, detector, tmp_path / "cache")
    assert det.calls == 1 and vae.images == 2 and after.report.computed == 1 and after.report.from_cache == 4
    assert torch.equal(after.latents[[0, 2]], before.latents[[0, 2]])
    assert not torch.equal(after.latents[1], before.latents[1])


@pytest.mark.parametrize("cached", [True, False])
def test_the_run_identity_follows_the_photos_content_not_how_the_folder_is_named(
    small, encoder, detector, tmp_path, monkeypatch, cached
):
    """Issue 13, point 9: photos replaced under the same names are another dataset; a relative and an
    absolute name of one folder are the same one (packed in the cache, or kept in memory)."""
    photos = shutil.copytree(small, tmp_path / "photos")
    cache = tmp_path / "cache" if cached else None
    absolute = _prepare(photos, encoder, detector, cache)
    assert len(absolute.keys) == len(absolute.files) == 3
    monkeypatch.chdir(tmp_path)
    relative = _prepare(Path("photos"), encoder, detector, cache)
    assert relative.report.folder == str(photos.resolve())
    assert dataset_digest(relative) == dataset_digest(absolute)
    _save(photos / "alice" / "1.png", _face(ASTRONAUT, side=64, centre=(160, 144)))  # same name, other photo
    replaced = _prepare(Path("photos"), encoder, detector, cache)
    assert replaced.files == absolute.files
    assert dataset_digest(replaced) != dataset_digest(absolute)
    assert names_only_dataset_digest(replaced) == names_only_dataset_digest(absolute)  # what older versions saw
    if cached:
        assert open_training_set(replaced.path).keys == replaced.keys  # the packed file keeps them


def test_one_latent_key_for_two_vaes_is_an_error(small, encoder, detector, tmp_path):
    photos = shutil.copytree(small, tmp_path / "photos")
    _prepare(photos, encoder, detector, tmp_path / "cache")
    _save(photos / "a.png", _face(CAT))

    def five_channels(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([stand_in_vae(images), stand_in_vae(images)[:, :1]], dim=1)

    with pytest.raises(DatasetError, match=r"different shapes .* latent_key 'stand-in-vae'.*must name exactly one VAE"):
        _prepare(photos, encoder, detector, tmp_path / "cache", encode_latents=five_channels)


def test_a_damaged_cache_file_is_recomputed(small, encoder, detector, tmp_path):
    cache = tmp_path / "cache"
    before, _, _ = _cached_run(small, encoder, detector, cache)
    files = sorted(cache.glob("*/*.safetensors"))
    assert len(files) == 5 and len(list(cache.glob("*/settings.json"))) == 1
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])
    after, det, vae = _cached_run(small, encoder, detector, cache)
    assert after.report.cache_repaired == 1 and after.report.computed == 1 and det.calls == 1 and vae.images == 2
    assert torch.equal(after.latents, before.latents)
    assert "1 damaged cache files redone" in after.report.summary()


# --- the packed set: one memory-mapped file per folder listing ------------------------------------------


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory mapping holds the tensor's data (Linux's /proc/self/maps), else None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_the_set_is_one_packed_file_that_safetensors_reads_and_ranks_map(small, encoder, detector, tmp_path):
    first, _, _ = _cached_run(small, encoder, detector, tmp_path / "cache")
    assert first.path is not None and first.path.parent.name == "sets" and first.path.is_file()
    for name in ("idvec", "latents", "masks"):  # mapped from the file, not read into memory
        assert _mapped_file(getattr(first, name)) == str(first.path.resolve())
    on_disk = load_file(str(first.path))  # plain safetensors
    assert set(on_disk) == {"idvec", "latents", "masks", "source_side"} and on_disk["latents"].dtype == torch.float16
    for name in ("idvec", "latents", "masks", "source_side"):
        assert torch.equal(on_disk[name], getattr(first, name))
    opened = open_training_set(first.path)  # what another rank does: the files, persons and report come along
    assert opened.files == first.files and opened.person == first.person
    assert opened.report.summary() == first.report.summary() and opened.settings["cache"] == first.settings["cache"]
    second, _, _ = _cached_run(small, encoder, detector, tmp_path / "cache")
    assert second.path == first.path and second.path.stat().st_mtime_ns == first.path.stat().st_mtime_ns


def test_a_new_photo_makes_a_new_set_and_the_old_one_goes(small, encoder, detector, tmp_path):
    photos = shutil.copytree(small, tmp_path / "photos")
    before, _, _ = _cached_run(photos, encoder, detector, tmp_path / "cache")
    _save(photos / "carol" / "1.png", _face(CAT, centre=(128, 192)))
    after, det, vae = _cached_run(photos, encoder, detector, tmp_path / "cache")
    assert det.calls == 1 and vae.images == 2 and after.report.from_cache == 5
    assert after.files == ["a.png", "alice/1.png", "bob/1.png", "carol/1.png"] and after.path != before.path
    assert sorted(after.path.parent.iterdir()) == [after.path]  # the folder's old set was deleted
    assert torch.equal(after.latents[:3], before.latents)


def test_a_cache_without_sets_or_with_a_damaged_set_is_packed_again(small, encoder, detector, tmp_path):
    cache = tmp_path / "cache"
    first, _, _ = _cached_run(small, encoder, detector, cache)
    shutil.rmtree(first.path.parent)  # a cache as the previous version wrote it: per-photo files only
    old, det, vae = _cached_run(small, encoder, detector, cache)
    assert det.calls == 0 and vae.images == 0 and old.path == first.path and torch.equal(old.latents, first.latents)
    old.path.write_bytes(old.path.read_bytes()[:1000])  # cut short
    repaired, det, _ = _cached_run(small, encoder, detector, cache)
    assert det.calls == 0 and repaired.report.cache_repaired == 1 and torch.equal(repaired.masks, first.masks)
    header = json.dumps({"__metadata__": {"format": "f2d-training-set", "version": "0"}}).encode()
    repaired.path.write_bytes(len(header).to_bytes(8, "little") + header)  # another version
    again, _, _ = _cached_run(small, encoder, detector, cache)
    assert again.report.cache_repaired == 1 and torch.equal(again.idvec, first.idvec)


def test_shares_prepared_by_two_ranks_make_the_single_process_set(small, encoder, detector, tmp_path):
    alone, _, _ = _cached_run(small, encoder, detector, tmp_path / "alone")
    counted = []
    for rank in (0, 1):
        counting = CountingDetector(detector)
        share = prepare_share(
            small, encoder, counting, stand_in_vae, "stand-in-vae", rank=rank, world_size=2,
            cache_dir=tmp_path / "shared", crop_size=SIZE,
        )  # fmt: skip
        counted.append((counting.calls, share.total_files))
    assert counted == [(3, 3), (1, 2)]  # a.png, bob/1.png, night.png | alice/1.png, broken.jpg (undecodable)
    together, det, vae = _cached_run(small, encoder, detector, tmp_path / "shared")
    assert det.calls == 0 and vae.images == 0 and together.report.from_cache == 5
    assert together.files == alone.files and together.report.counts() == alone.report.counts()
    assert torch.equal(together.latents, alone.latents) and torch.equal(together.masks, alone.masks)
    torch.testing.assert_close(together.idvec, alone.idvec, atol=1e-5, rtol=0)  # the ViT ran in other batches


# --- stopping, progress, folder errors -------------------------------------------------------------


def test_should_stop_stops_and_a_new_run_resumes(small, encoder, detector, tmp_path):
    counting = CountingDetector(detector)
    seen = []
    with pytest.raises(PreparationStopped, match="stopped after 2 of 5 files"):
        _prepare(
            small, encoder, counting, tmp_path / "cache", batch_size=1,
            progress=lambda done, total: seen.append((done, total)), should_stop=lambda: len(seen) > 2,
        )  # fmt: skip
    assert counting.calls == 2 and seen[-1] == (2, 5)  # a.png and alice/1.png, then it stopped
    resumed, det, _ = _cached_run(small, encoder, detector, tmp_path / "cache", batch_size=1)
    assert resumed.report.from_cache == 2 and det.calls == 2 and len(resumed) == 3


def test_progress_counts_every_file(full):
    assert PROGRESS[0] == (0, 10) and PROGRESS[-1] == (10, 10)
    assert [d for d, _ in PROGRESS] == list(range(11))


def test_greyscale_16_bit_cmyk_and_palette_photos_are_read_as_their_pixels(encoder, detector, tmp_path):
    """Issue 13, photo formats inside a training folder: each decodes to its own pixels (a 16-bit PNG is not
    clipped to white), and each is prepared like any photo."""
    face = _face(ASTRONAUT)
    grey = np.asarray(Image.fromarray(face).convert("L"))
    palette = Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    folder = tmp_path / "formats"
    _save(folder / "grey.png", grey)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")  # 16-bit greyscale PNG
    Image.fromarray(face).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    palette.save(folder / "palette.png")
    for name, expected, tolerance in (
        ("grey.png", np.repeat(grey[..., None], 3, axis=2), 0),
        ("grey16.png", np.repeat(grey[..., None], 3, axis=2), 0),
        ("cmyk.jpg", face, 6),  # JPEG's loss, mean per pixel
        ("palette.png", np.asarray(palette.convert("RGB")), 0),
    ):
        image = Image.open(folder / name)
        decoded = decode_photo((folder / name).read_bytes())
        assert decoded.shape == face.shape and decoded.dtype == np.uint8, name
        error = np.abs(decoded.astype(int) - expected.astype(int)).mean()
        assert error <= tolerance, (name, image.mode, error)
    data = _prepare(folder, encoder, detector, None)
    assert sorted(data.files) == ["cmyk.jpg", "grey.png", "grey16.png", "palette.png"]
    assert data.report.counts() == {}
    g, g16 = data.files.index("grey.png"), data.files.index("grey16.png")
    assert torch.equal(data.latents[g], data.latents[g16])  # 16-bit grey is the 8-bit photo, not white


def test_missing_empty_and_faceless_folders_are_errors(encoder, detector, tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere does not exist"):
        _prepare(tmp_path / "nowhere", encoder, detector, None)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    with pytest.raises(DatasetError, match=r"empty is empty"):
        _prepare(tmp_path / "empty", encoder, detector, None)
    junk = tmp_path / "junk"
    _save(junk / "dark.png", np.zeros(PHOTO, np.uint8))
    (junk / "readme.md").parent.mkdir(exist_ok=True)
    (junk / "readme.md").write_text("hi")
    with pytest.raises(DatasetError, match=r"No usable face photo among the 2 files of .*junk.*1 not an image"):
        _prepare(junk, encoder, detector, None)


def test_face_index_beyond_the_faces_found_skips_the_photo(small, encoder, detector):
    with pytest.raises(DatasetError, match=r"4 no face found \(a.png, alice/1.png, bob/1.png, \.\.\.\)"):
        _prepare(small, encoder, detector, None, face_index=1)


@pytest.mark.parametrize("kind", ["PNG", "WEBP", "MPO"])
def test_a_file_of_several_frames_is_its_first_frame_in_training_and_identity_folders(kind: str) -> None:
    """An animated PNG or WebP and a phone's MPO JPEG (two images) in a training or identity folder (both read
    files with decode_photo) are one photo: the first frame, never the second (docs/nodes.md, One file,
    several frames)."""
    first = si.face_photo(load_rgb(ASTRONAUT), size=(96, 96), centre=(48, 48), side=40)
    second = np.full_like(first, 200)
    buffer = io.BytesIO()
    options = {"lossless": True} if kind == "WEBP" else {"quality": 100} if kind == "MPO" else {}
    Image.fromarray(first).save(buffer, format=kind, save_all=True, append_images=[Image.fromarray(second)], **options)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    decoded = decode_photo(buffer.getvalue()).astype(int)
    assert np.abs(decoded - first).mean() < 2 < np.abs(decoded - second).mean(), kind


# --- SDXL: the face's size in the photo, and a VAE that overflows ----------------------------------------


def test_source_side_is_the_ffhq_quad_side_in_photo_pixels_for_both_views(small, encoder, detector, tmp_path):
    data, _, _ = _cached_run(small, encoder, detector, tmp_path / "cache")
    assert data.source_side is not None and data.source_side.shape == (3, 2)
    for i, name in enumerate(data.files):
        rgb, kps = _photo_and_kps(small, name, detector)
        # The crop shrinks the quad by S / side: |det| of the photo -> crop matrix is (S / side)^2.
        det = torch.linalg.det(ffhq_matrix(kps, SIZE)[0, :, :2].double()).abs()
        side = SIZE / det.sqrt()
        assert data.source_side[i, 0].item() == pytest.approx(side.item(), rel=1e-5)
        assert data.source_side[i, 1].item() == data.source_side[i, 0].item()  # the mirrored photo: same face size
        mirrored = source_side(mirror_landmarks(kps, rgb.shape[1]))
        assert mirrored.item() == pytest.approx(side.item(), rel=1e-5)
    # the faces are squares of side 128 in 320-pixel photos: the quad is a bit larger than the face
    assert 100 < data.source_side.min() and data.source_side.max() < 400
    again = open_training_set(data.path)  # packed with the set, read back by every rank
    assert torch.equal(again.source_side, data.source_side)


def test_non_finite_latents_are_refused_with_the_vae_hint(small, encoder, detector, tmp_path):
    def fp16_sdxl_vae(images: torch.Tensor) -> torch.Tensor:
        latents = stand_in_vae(images)
        latents[0, 0, 0, 0] = float("nan")  # what the SDXL VAE's overflow in fp16 gives
        return latents

    with pytest.raises(F2DError, match=r"NaN or infinite latents .*--fp32-vae or --bf16-vae.*fp16-fix SDXL VAE"):
        _prepare(small, encoder, detector, tmp_path / "cache", encode_latents=fp16_sdxl_vae, latent_key="fp16")
