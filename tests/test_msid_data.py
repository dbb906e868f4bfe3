"""MSID training data: identity folders (aligned crops, loose photos), insightface record files, the loader.

Faces have no labelled identity set offline, so identities are built from real photos that packages
ship (skimage's astronaut, insightface's aligned Tom_Hanks crop and t1.jpg group photo), each
augmented (shifted, scaled, brightened) into several images, plus synthetic ones (smooth random
colour fields). Photos to detect are the synthetic detector's faces (tests/support/synthetic_insightface.py):
a red square carrying a real photo's texture.
"""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from cli.rank_sync import RankSync
from f2d_core.errors import DatasetError
from f2d_core.faces.alignment import align_faces
from f2d_core.faces.face_detection import FaceDetector
from f2d_core.msid_training.data import record_file as rf
from f2d_core.msid_training.data.face_dataset import (
    FaceRecognitionDataset,
    open_training_data,
    open_training_data_on_ranks,
)
from f2d_core.msid_training.data.identity_folder import MIN_EYE_DISTANCE, align_photo, encode_crop
from f2d_core.msid_training.data.loader import make_training_loader
from f2d_core.training.data.report import (
    BAD_RECORD,
    EMPTY_IDENTITY,
    FACE_TOO_SMALL,
    NESTED_FOLDER,
    NO_FACE,
    NO_IDENTITY,
    NOT_IMAGE,
    UNREADABLE,
)
from tests.support import synthetic_insightface as si
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb
from tests.support.record_writer import MAGIC_BYTES, frame, write_record_folder

PHOTO = (320, 320)  # the synthetic detector at det_size 320 finds a 128 px square centred on a multiple of 32


def _augmented(rgb: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """`count` 112x112 crops of a photo, each shifted, scaled and brightened at random (one identity)."""
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.8, 0.95))
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(rgb[y : y + side, x : x + side]).resize((112, 112), Image.BILINEAR)
        out.append(np.clip(np.asarray(crop, np.int16) + rng.integers(-20, 21), 0, 255).astype(np.uint8))
    return out


def _synthetic(count: int, seed: int) -> list[np.ndarray]:
    """A synthetic identity: one smooth random colour field, with per-image noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)).resize((112, 112)), np.int16)
    return [np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def identities() -> dict[str, list[np.ndarray]]:
    """Four identities of 112x112 crops: three from real photos, one synthetic."""
    astronaut = load_rgb(ASTRONAUT)[20:230, 140:330]  # her face and hair
    group = load_rgb(GROUP)
    return {
        "astronaut": _augmented(astronaut, 4, 0),
        "tom_hanks": _augmented(load_rgb(ALIGNED_CROP), 3, 1),
        "group_photo": _augmented(group[: group.shape[0] // 2, : group.shape[1] // 3], 3, 2),
        "synthetic": _synthetic(3, 3),
    }


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _pil(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


# --- record files ---------------------------------------------------------------------------------


def _record_images() -> list[tuple[bytes, float | list[float]]]:
    """(JPEG, label) per image; some records carry several labels (flag > 0), as some of insightface's sets do."""
    out = []
    for label, crops in enumerate(identities().values()):
        for n, crop in enumerate(crops):
            out.append((_jpeg(crop), [float(label), 1.0] if n % 2 else float(label)))
    return out


def test_a_record_folder_reads_back_image_for_image_and_label_for_label(tmp_path: Path) -> None:
    images = _record_images()
    ids = [rf.MAGIC if n == 2 else n for n in range(len(images))]  # record 2's header holds the magic: split in parts
    write_record_folder(tmp_path / "rec", images, num_classes=4, record_ids=ids)
    data = open_training_data(tmp_path / "rec")
    assert isinstance(data, FaceRecognitionDataset) and data.num_classes == 4 and len(data) == len(images)
    expected_labels = [int(lab if isinstance(lab, float) else lab[0]) for _, lab in images]
    assert data.labels.tolist() == expected_labels
    for i, (jpeg, _) in enumerate(images):
        image, label = data[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert torch.equal(image, _pil(jpeg)) and label == expected_labels[i]
    assert data.report.images == len(images) and data.report.identities == 4 and not data.report.skipped
    assert (
        rf.read_record(frame(b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES), 0) == b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES
    )


def test_a_payload_with_the_magic_inside_is_written_in_parts_and_joined_on_reading() -> None:
    payload = b"head" + MAGIC_BYTES + b"middle!!" + MAGIC_BYTES + b"tail"
    framed = frame(payload)
    flags = [int.from_bytes(framed[i + 4 : i + 8], "little") >> 29 for i in (0, 12, 28)]
    assert flags == [rf.FIRST, rf.MIDDLE, rf.LAST]
    assert rf.read_record(framed, 0) == payload


def test_without_a_meta_record_every_key_is_an_image(tmp_path: Path) -> None:
    images = _record_images()[:5]
    write_record_folder(tmp_path / "rec", images, num_classes=4, meta_record=False)
    data = open_training_data(tmp_path / "rec" / "train.rec")
    assert len(data) == 5 and torch.equal(data[4][0], _pil(images[4][0]))


def test_damaged_records_are_named_skipped_and_counted(tmp_path: Path) -> None:
    images = _record_images()
    folder = tmp_path / "rec"
    offsets = write_record_folder(folder, images, num_classes=4)
    rec = bytearray((folder / "train.rec").read_bytes())
    rec[offsets[3] : offsets[3] + 4] = b"\0\0\0\0"  # record key 4: bad magic
    (folder / "train.rec").write_bytes(bytes(rec[: offsets[-1] + 100]))  # the last record (key 13) is cut
    data = open_training_data(folder)
    assert len(data) == len(images) - 2
    assert data.report.counts() == {BAD_RECORD: 2}
    assert data.report.files_for(BAD_RECORD) == ["train.rec record 4", f"train.rec record {len(images)}"]
    details = [s.detail for s in data.report.skipped]
    assert "bad magic" in details[0] and "truncated" in details[1]
    kept = [i for i in range(len(images)) if i not in (3, len(images) - 1)]
    for row, i in enumerate(kept):
        assert torch.equal(data[row][0], _pil(images[i][0]))


def test_a_record_whose_image_does_not_decode_is_replaced_by_the_next_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = _record_images()[:4]
    images[1] = (images[1][0][:200], images[1][1])  # a JPEG cut short: framing intact, the image undecodable
    write_record_folder(tmp_path / "rec", images, num_classes=4)
    data = open_training_data(tmp_path / "rec")
    assert len(data) == 4  # only decoding can tell
    image, label = data[1]
    assert torch.equal(image, _pil(images[2][0])) and label == 0  # the next record's image and label
    assert "record 2 does not decode" in caplog.text and "using the next" in caplog.text


@pytest.mark.parametrize("missing", ["train.idx", "property"])
def test_a_missing_index_or_property_names_the_file_and_the_fix(tmp_path: Path, missing: str) -> None:
    write_record_folder(tmp_path / "rec", _record_images()[:2], num_classes=4)
    (tmp_path / "rec" / missing).unlink()
    with pytest.raises(rf.RecordFileError, match=f"{missing} is missing.*copy it beside train.rec"):
        open_training_data(tmp_path / "rec")


# --- identity folders of aligned crops ------------------------------------------------------------


def _write_aligned_folder(root: Path) -> dict[str, list[Path]]:
    """Identity folders (one with a non-ASCII name) of aligned crops, and bad data of every kind."""
    written: dict[str, list[Path]] = {}
    for name, crops in identities().items():
        person = "astronaut_Éva" if name == "astronaut" else name
        (root / person).mkdir(parents=True)
        written[person] = []
        for n, crop in enumerate(crops):
            path = root / person / (f"{n}.jpg" if n % 2 else f"{n}_ü.png")
            Image.fromarray(crop).save(path)
            written[person].append(path)
    (root / "empty_person").mkdir()
    (root / "tom_hanks" / "notes.txt").write_text("not an image")
    (root / "tom_hanks" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)))
    (root / "synthetic" / "more").mkdir()
    Image.fromarray(identities()["synthetic"][0]).save(root / "loose.png")
    # OS and NAS litter under plain names: neither identities nor bad files (a Mac zip's resource forks, a
    # Synology thumbnail folder per photo, Windows' thumbnail cache and folder settings).
    (root / "__MACOSX" / "tom_hanks").mkdir(parents=True)
    Image.fromarray(identities()["synthetic"][0]).save(root / "__MACOSX" / "tom_hanks" / "0.png")
    (root / "tom_hanks" / "@eaDir" / "0.jpg").mkdir(parents=True)
    Image.fromarray(identities()["synthetic"][0]).save(
        root / "tom_hanks" / "@eaDir" / "0.jpg" / "SYNOPHOTO_THUMB_M.jpg"
    )
    (root / "tom_hanks" / "Thumbs.db").write_bytes(bytes(range(256)))
    (root / "Desktop.ini").write_text("[.ShellClassInfo]\r\n")
    return written


def test_an_identity_folder_of_aligned_crops_and_its_report(tmp_path: Path) -> None:
    written = _write_aligned_folder(tmp_path / "faces")
    data = open_training_data(tmp_path / "faces", cache_dir=tmp_path / "cache")
    assert data.identities == sorted(written) and data.num_classes == 4
    expected = [(p, label) for label, person in enumerate(sorted(written)) for p in sorted(written[person])]
    assert len(data) == len(expected)
    for i, (path, label) in enumerate(expected):
        image, got = data[i]
        assert torch.equal(image, _pil(path.read_bytes())) and got == label
    report = data.report
    assert report.counts() == {NOT_IMAGE: 1, UNREADABLE: 1, NESTED_FOLDER: 1, NO_IDENTITY: 1, EMPTY_IDENTITY: 1}
    assert report.files_for(EMPTY_IDENTITY) == ["empty_person/"] and report.files_for(NO_IDENTITY) == ["loose.png"]
    assert report.files_for(UNREADABLE) == ["tom_hanks/broken.jpg"]
    assert report.images == len(expected) and report.identities == 4 and report.detected == 0

    again = open_training_data(tmp_path / "faces", cache_dir=tmp_path / "cache")
    in_memory = open_training_data(tmp_path / "faces")  # no cache: decoded crops kept in memory
    assert again.report.from_cache == report.total_files and again.report.counts() == report.counts()
    everything = range(len(data))
    for other in (again, in_memory):
        assert torch.equal(other.labels, data.labels) and torch.equal(
            other.batch(everything)[0], data.batch(everything)[0]
        )


def test_photos_to_align_without_a_detector_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "faces" / "alice").mkdir(parents=True)
    Image.fromarray(si.face_photo(load_rgb(ASTRONAUT), PHOTO, (160, 160), 128)).save(tmp_path / "faces/alice/1.png")
    with pytest.raises(DatasetError, match=r"1 images .* not 112x112 aligned crops \(alice/1.png\).*face detector"):
        open_training_data(tmp_path / "faces")


# --- identity folders of photos: detected and aligned once --------------------------------------


class CountingDetector:
    """The pack's detector, counting the photos it is shown."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.calls = detector, []
        self.pack_dir, self.pack_name = detector.pack_dir, detector.pack_name
        self.det_size, self.retry_det_size = detector.det_size, detector.retry_det_size

    def detect(self, image, label: str = "image"):
        self.calls.append(label)
        return self.detector.detect(image, label)


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> FaceDetector:
    root = tmp_path_factory.mktemp("insightface")
    si.write_synthetic_pack(root, "pack", files=["det_10g.onnx"])
    return FaceDetector(root, "pack", det_size=320, retry_det_size=None)


def _write_photo_folder(root: Path) -> dict[str, np.ndarray]:
    """Photos the synthetic detector finds (real textures), a faceless one, a tiny face, an aligned crop."""
    photos = {
        "astronaut/1.png": si.face_photo(load_rgb(ASTRONAUT), PHOTO, (160, 160), 128),
        "astronaut/2.png": si.face_photo(load_rgb(ASTRONAUT), PHOTO, (128, 192), 128, shade=-30),
        "gruppe_Ørsted/1.png": si.face_photo(load_rgb(GROUP), PHOTO, (160, 160), 128),
        "gruppe_Ørsted/night.png": np.zeros((*PHOTO, 3), np.uint8),
        "gruppe_Ørsted/tiny.png": si.face_photo(load_rgb(GROUP), (160, 160), (80, 80), 16),
        "tom_hanks/aligned.png": load_rgb(ALIGNED_CROP),
    }
    for name, rgb in photos.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / name)
    return photos


def test_photos_are_detected_aligned_once_and_cached(tmp_path: Path, detector: FaceDetector) -> None:
    photos = _write_photo_folder(tmp_path / "faces")
    counting = CountingDetector(detector)
    data = open_training_data(tmp_path / "faces", cache_dir=tmp_path / "cache", detector=counting)
    assert sorted(counting.calls) == sorted(n for n in photos if n != "tom_hanks/aligned.png")
    assert data.report.counts() == {NO_FACE: 1, FACE_TOO_SMALL: 1}
    assert data.report.files_for(FACE_TOO_SMALL) == ["gruppe_Ørsted/tiny.png"]
    (tiny,) = [s for s in data.report.skipped if s.reason == FACE_TOO_SMALL]
    assert f"at least {MIN_EYE_DISTANCE:g}" in tiny.detail
    assert data.labels.tolist() == [0, 0, 1, 2] and data.report.detected == 3
    for i, name in enumerate(["astronaut/1.png", "astronaut/2.png", "gruppe_Ørsted/1.png"]):
        rgb = photos[name]
        (face,) = detector.detect(rgb)
        crop = align_photo(rgb, face.kps)
        whole = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        reference = align_faces(whole, torch.from_numpy(face.kps)[None])[0].mul(255).round().to(torch.uint8)
        assert (crop.int() - reference.int()).abs().max() <= 1  # the window's float32 rounding at most
        assert torch.equal(data[i][0], _pil(encode_crop(crop)))  # stored as a JPEG of quality CROP_QUALITY
    assert torch.equal(data[3][0], torch.from_numpy(photos["tom_hanks/aligned.png"]).permute(2, 0, 1))

    counting.calls.clear()
    again = open_training_data(tmp_path / "faces", cache_dir=tmp_path / "cache", detector=counting)
    assert counting.calls == [] and torch.equal(again.batch(range(4))[0], data.batch(range(4))[0])

    extra = si.face_photo(load_rgb(GROUP), PHOTO, (192, 160), 128, shade=20)
    Image.fromarray(extra).save(tmp_path / "faces" / "tom_hanks" / "photo.png")
    grown = open_training_data(tmp_path / "faces", cache_dir=tmp_path / "cache", detector=counting)
    assert counting.calls == ["tom_hanks/photo.png"] and len(grown) == 5  # only the new photo is detected


def test_ranks_detect_their_shares_and_map_rank_0s_pack(tmp_path: Path, detector: FaceDetector) -> None:
    _write_photo_folder(tmp_path / "faces")
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=1))
    counters = [CountingDetector(detector) for _ in range(2)]
    results: dict[int, FaceRecognitionDataset] = {}

    def rank(r: int) -> None:
        results[r] = open_training_data_on_ranks(
            tmp_path / "faces",
            rank=r,
            world_size=2,
            sync=RankSync(store, r, 2, poll_seconds=0.02),
            cache_dir=tmp_path / "cache",
            detector=counters[r],
        )

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(counters[0].calls + counters[1].calls) == sorted(
        [
            "astronaut/1.png",
            "astronaut/2.png",
            "gruppe_Ørsted/1.png",
            "gruppe_Ørsted/night.png",
            "gruppe_Ørsted/tiny.png",
        ]
    )
    assert counters[0].calls and counters[1].calls  # both ranks detected a share; rank 0's packing detected nothing new
    assert torch.equal(results[0].labels, results[1].labels) and results[1].identities == results[0].identities
    assert torch.equal(results[0].batch(range(4))[0], results[1].batch(range(4))[0])


# --- the loader ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record_data(tmp_path_factory: pytest.TempPathFactory) -> FaceRecognitionDataset:
    images = [(_jpeg(c), float(n % 4)) for n, c in enumerate(_synthetic(40, 7))]
    folder = tmp_path_factory.mktemp("loader") / "rec"
    write_record_folder(folder, images, num_classes=4)
    return open_training_data(folder)


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _labels_key(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_the_loader_is_deterministic_per_epoch_and_ranks_share_disjointly(record_data) -> None:
    one = make_training_loader(record_data, 4, seed=3, epoch=1, workers=0, pin_memory=False)
    batches = _batches(one)
    assert len(batches) == 10 and all(x.dtype == torch.uint8 and x.shape == (4, 3, 112, 112) for x, _ in batches)
    assert all(y.dtype == torch.int64 for _, y in batches)
    order = one.sampler.epoch_order()
    for (x, y), idx in zip(batches, order, strict=True):
        assert (
            torch.equal(x, torch.stack([record_data[i][0] for i in idx]))
            and y.tolist() == record_data.labels[idx].tolist()
        )
    again = _batches(make_training_loader(record_data, 4, seed=3, epoch=1, workers=2, pin_memory=False))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    other = make_training_loader(record_data, 4, seed=3, epoch=2, workers=0, pin_memory=False).sampler.epoch_order()
    assert not np.array_equal(order, other) and sorted(order.ravel()) == sorted(other.ravel()) == list(range(40))

    shares = [
        make_training_loader(record_data, 3, rank=r, world_size=3, seed=3, workers=0, pin_memory=False)
        for r in range(3)
    ]
    seen = [set(s.sampler.epoch_order().ravel().tolist()) for s in shares]
    assert all(len(s) == 12 for s in seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of steps


def test_the_loader_resumes_mid_epoch_and_reuses_its_workers_across_epochs(record_data) -> None:
    full = _batches(make_training_loader(record_data, 4, seed=5, epoch=2, workers=0, pin_memory=False))
    resumed = make_training_loader(record_data, 4, seed=5, epoch=2, start_batch=6, workers=2, pin_memory=False)
    assert len(resumed) == 4
    tail = _batches(resumed)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[6:], tail, strict=True))
    resumed.sampler.set_epoch(3)
    next_epoch = _batches(resumed)
    expected = _batches(make_training_loader(record_data, 4, seed=5, epoch=3, workers=0, pin_memory=False))
    assert _labels_key(next_epoch) == _labels_key(expected) and len(next_epoch) == 10


# --- untrusted record files and their variants (issue 18) ----------------------------------------


def _expected(images) -> list[int]:
    return [int(lab if isinstance(lab, float) else lab[0]) for _, lab in images]


def test_every_layout_insightfaces_tools_write_reads_the_same_images(tmp_path: Path) -> None:
    """Meta record + identity records (face2rec2.py), im2rec --pack-label without a meta record (record 0 has
    labels and an image), and several .rec parts (im2rec --chunks): the same images and labels."""
    images = _record_images()
    write_record_folder(tmp_path / "insightface", images, num_classes=4, identity_records=True)
    packed = [(jpeg, [float(lab if isinstance(lab, float) else lab[0]), 7.0, 0.5]) for jpeg, lab in images]
    write_record_folder(tmp_path / "pack_label", packed, num_classes=4, meta_record=False)
    write_record_folder(tmp_path / "parts", images[:6], num_classes=4, meta_record=False, stem="train_0")
    write_record_folder(tmp_path / "parts", images[6:], num_classes=4, stem="train_1")
    for folder in ("insightface", "pack_label", "parts"):
        data = open_training_data(tmp_path / folder)
        assert len(data) == len(images) and data.labels.tolist() == _expected(images), folder
        assert not data.report.skipped, (folder, data.report.skipped_text())
        for i in (0, 5, 6, len(images) - 1):
            assert torch.equal(data[i][0], _pil(images[i][0])), (folder, i)
    parts = open_training_data(tmp_path / "parts" / "train_1.rec")
    assert len(parts) == len(images)


def test_a_meta_record_above_2_to_the_24_images_is_read_within_float32s_rounding() -> None:
    """Issue 18: WebFace42M and Glint360K have more than 2^24 images, which float32 cannot count exactly.
    A small file whose index lists 2^24 + 2 image keys (all pointing at one image record) under a meta
    record claiming 2^24 + 3 (stored as the float32 2^24 + 4)."""
    from tests.support.record_writer import ir_payload

    true_end = (1 << 24) + 3
    claimed = float(np.float32(true_end))
    assert claimed == true_end + 1  # the rounding
    meta = frame(ir_payload([claimed, claimed + 4], b""))
    buffer = meta + frame(ir_payload(0.0, _jpeg(_synthetic(1, 0)[0])))
    keys = np.arange(true_end, dtype=np.int64)  # the meta record and the images 1 .. 2^24 + 2
    offsets = np.full(true_end, len(meta), dtype=np.int64)
    offsets[0] = 0
    image_keys, _ = rf.image_keys(buffer, keys, offsets)
    assert len(image_keys) == true_end - 1 and image_keys[-1] == true_end - 1
    assert rf.meta_image_end(claimed, lambda key: key < true_end) == true_end
    assert rf.meta_image_end(99.0, lambda key: True) == 99  # exact below 2^24
    with pytest.raises(rf.RecordFileError, match="gives nan as the image count"):
        rf.meta_image_end(float("nan"), lambda key: True)


def _odd_records(tmp_path: Path) -> Path:
    """A record file of odd payloads (short headers, more labels announced than present, an empty record)."""
    from tests.support.record_writer import ir_payload

    jpeg = _jpeg(_synthetic(1, 0)[0])
    payloads = [
        ir_payload(1.0, jpeg),
        struct_pack_header(5, 1) + b"\0" * 4,  # 5 labels announced, 1 present: the old quick scan took it
        struct_pack_header(1, 0)[:20],  # shorter than the 24-byte header
        ir_payload([2.0, 3.0], jpeg),
        b"",
        struct_pack_header(0x7FFFFFFF, 0) + jpeg,  # 2^31 labels announced
    ]
    folder = tmp_path / "odd"
    folder.mkdir()
    rec, idx = bytearray(), []
    for key, payload in enumerate(payloads):
        idx.append(f"{key}\t{len(rec)}\n")
        rec += frame(payload)
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("".join(idx))
    (folder / "property").write_text("4,112,112\n")
    return folder


def struct_pack_header(flag: int, label: float) -> bytes:
    import struct

    return struct.pack("<IfQQ", flag, label, 0, 0)


def test_the_quick_scan_agrees_with_the_full_parse_and_bad_bytes_are_named(tmp_path: Path) -> None:
    folder = _odd_records(tmp_path)
    buffer = (folder / "train.rec").read_bytes()
    keys, offsets = rf.read_index(folder)
    keys = np.append(keys, [10, 11])
    offsets = np.append(offsets, [-8, len(buffer) + 64])  # offsets outside the file
    scan = rf.scan_records(buffer, keys, offsets, 4)
    for key, offset in zip(keys.tolist(), offsets.tolist(), strict=True):
        try:
            header, _ = rf.unpack_record(rf.read_record(buffer, offset))
            parsed = 0 <= header.labels[0] < 4
        except rf.BadRecord:
            parsed = False
        assert parsed == (key in scan.keys.tolist()), key
    assert scan.keys.tolist() == [0, 3]
    bad = dict(scan.bad)
    assert "announces 5 labels" in bad[1] and "no 24-byte header" in bad[2] and "outside the file" in bad[10]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty_rec", r"train.rec cannot be read as a record file: cannot mmap an empty file"),
        ("huge_index", r"train.idx is not lines of 'key<TAB>byte offset' integers"),
        ("nan_meta", r"record 0 \(insightface's meta header\) gives nan as the image count's end"),
        ("binary_property", r"property holds"),
    ],
)
def test_damaged_files_raise_a_dataset_error_naming_the_file(tmp_path: Path, damage: str, message: str) -> None:
    """Issue 18: no struct.error, EOFError, OSError, ValueError or OverflowError from the bytes."""
    folder = tmp_path / "rec"
    write_record_folder(
        folder, _record_images()[:3], num_classes=4, meta_labels=[float("nan"), 1.0] if damage == "nan_meta" else None
    )
    if damage == "empty_rec":
        (folder / "train.rec").write_bytes(b"")
    elif damage == "huge_index":
        (folder / "train.idx").write_text("0\t99999999999999999999999\n")
    elif damage == "binary_property":
        (folder / "property").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match=message):
        open_training_data(folder)


def _eps() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (112, 112)).save(buffer, "EPS")
    return buffer.getvalue()


def test_eps_and_other_formats_never_reach_their_decoders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: a record's or an identity folder's bytes open only as JPEG, PNG, WebP or BMP (EPS starts
    Ghostscript); 16 undecodable records in a row are a DatasetError naming the file and key."""
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps"))
    images = _record_images()[:3]
    images[1] = (_eps(), images[1][1])
    write_record_folder(tmp_path / "rec", images, num_classes=4)
    data = open_training_data(tmp_path / "rec")
    image, _ = data[1]
    assert torch.equal(image, _pil(images[2][0]))
    assert "record 2 does not decode (not a JPEG, PNG, WEBP, BMP image" in caplog.text
    write_record_folder(tmp_path / "all_bad", [(_eps(), 0.0)] * 17, num_classes=4)
    with pytest.raises(DatasetError, match=r"16 records in a row from key 1 of .*all_bad/train.rec do not decode"):
        open_training_data(tmp_path / "all_bad")[0]

    for person in ("alice", "bob"):
        (tmp_path / "people" / person).mkdir(parents=True)
        Image.fromarray(_synthetic(1, 0)[0]).save(tmp_path / "people" / person / "a.png")
    (tmp_path / "people" / "alice" / "b.jpg").write_bytes(_eps())
    folder_data = open_training_data(tmp_path / "people")
    assert len(folder_data) == 2 and folder_data.report.files_for(UNREADABLE) == ["alice/b.jpg"]
    assert "not a JPEG, PNG, WEBP, BMP image" in folder_data.report.skipped[0].detail
    assert opened == []


def test_loader_workers_started_by_spawn_give_the_same_batches(record_data) -> None:
    """Issue 18: Windows and macOS start workers by spawn, Linux from Python 3.14 by forkserver (which, as
    spawn, pickles the dataset to each worker: the record file is mapped again there)."""
    start_method = "spawn"
    expected = _batches(make_training_loader(record_data, 4, seed=3, epoch=1, workers=0, pin_memory=False))
    loader = make_training_loader(
        record_data, 4, seed=3, epoch=1, workers=2, pin_memory=False, start_method=start_method
    )
    got = _batches(loader)
    assert loader.multiprocessing_context.get_start_method() == start_method
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got, strict=True))


def test_every_rank_runs_the_same_number_of_batches_whatever_the_set_size() -> None:
    """Issue 18 (uneven last batches): no rank may end an epoch early and leave the others waiting in a
    collective. drop_last leaves the tail out; without it the last batches wrap around."""
    from f2d_core.msid_training.data.loader import ShardedBatchSampler

    for world in (2, 3, 8):
        for size in range(world * 4, world * 4 + 3 * world * 4):
            for drop_last in (True, False):
                shares = [
                    ShardedBatchSampler(size, 4, rank=r, world_size=world, drop_last=drop_last) for r in range(world)
                ]
                assert len({len(list(s)) for s in shares}) == 1, (world, size, drop_last)
                assert all(len(batch) == 4 for s in shares for batch in s)
