"""insightface verification .bin files: read back in every protocol they come in; anything else refused unrun.

The faces are real photos packages ship (tests/support/identity_sets.py), written at test time into a .bin
in the byte layout Python 2's pickler gave insightface's lfw.bin (tests/support/verification_bins.py).
"""

from __future__ import annotations

import pickle

import pytest
import torch

from f2d_core.errors import DatasetError
from f2d_core.msid_training.verification.bin_file import read_verification_bin, read_verification_pickle
from tests.support.identity_sets import identity_set
from tests.support.verification_bins import (
    encode_faces,
    numpy_array_bin_bytes,
    verification_bin_bytes,
    write_verification_bin,
)

SIDE_EFFECT = {"ran": False}


def _side_effect(*args):
    """What a malicious .bin would run: the tests prove it never does."""
    SIDE_EFFECT["ran"] = True
    return b"x"


@pytest.fixture(autouse=True)
def sentinel():
    SIDE_EFFECT["ran"] = False
    yield
    assert not SIDE_EFFECT["ran"], "the reader ran code from a pickle"


@pytest.fixture(scope="module")
def faces():
    """3 pairs of real aligned faces: same, different, same."""
    data = identity_set(2, 0, seed=0)  # 8 real identities x 2 photos
    images = torch.stack(
        [data.images[0], data.images[1], data.images[2], data.images[4], data.images[6], data.images[7]]
    )
    return images, torch.tensor([True, False, True])


def test_python2_protocol_2_layout_is_what_python2_wrote():
    """The byte string Python 2.7's pickle.dumps((['ab'], [True]), 2) gives, so the writer is not circular."""
    assert verification_bin_bytes([b"ab"], [True], 2) == b"\x80\x02]q\x00U\x02abq\x01a]q\x02\x88a\x86q\x03."
    assert verification_bin_bytes([b"ab"], [False], 0) == b"((lp0\nS'ab'\np1\na(lp2\nI00\natp3\n."


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_reads_back(tmp_path, faces, protocol, image_format):
    images, same = faces
    path = write_verification_bin(tmp_path / "lfw.bin", images, same, protocol, image_format)
    vset = read_verification_bin(path)
    assert vset.faces.dtype == torch.uint8 and vset.faces.shape == (6, 3, 112, 112)
    assert vset.same.tolist() == [True, False, True]
    assert vset.first.tolist() == [0, 2, 4] and vset.second.tolist() == [1, 3, 5]
    if image_format == "PNG":
        assert torch.equal(vset.faces, images)
    else:
        assert (vset.faces.float() - images.float()).abs().mean() < 5  # JPEG quality 95 of noisy crops


def test_long_images_and_many_pairs_python2_layout(tmp_path):
    """Over 255 bytes per image (BINSTRING), over 256 memo entries (LONG_BINPUT), over 1000 items (batches)."""
    blobs = [bytes([i % 256]) * (300 + i % 7) for i in range(1100)]
    flags = [i % 3 == 0 for i in range(550)]
    path = tmp_path / "big.bin"
    path.write_bytes(verification_bin_bytes(blobs, flags, 2))
    assert read_verification_pickle(path) == (blobs, flags)
    path.write_bytes(verification_bin_bytes(blobs, flags, 0))
    assert read_verification_pickle(path) == (blobs, flags)


def test_square_images_of_another_size_are_resized_others_refused(tmp_path, faces):
    images, same = faces
    big = torch.nn.functional.interpolate(images.float(), size=(224, 224)).round().to(torch.uint8)
    vset = read_verification_bin(write_verification_bin(tmp_path / "a.bin", big, same, image_format="PNG"))
    assert vset.faces.shape == (6, 3, 112, 112)
    assert (vset.faces.float() - images.float()).abs().mean() < 6
    wide = torch.nn.functional.interpolate(images.float(), size=(112, 96)).round().to(torch.uint8)
    with pytest.raises(DatasetError, match=r"b\.bin: image 0 \(first of pair 0\) is 96x112"):
        read_verification_bin(write_verification_bin(tmp_path / "b.bin", wide, same))


def test_subset_is_balanced_and_decodes_only_its_pairs(tmp_path, faces):
    images, same = faces
    path = tmp_path / "lfw.bin"
    blobs = encode_faces(images)
    blobs[2] = b"not an image"  # pair 1 is the only different pair, so a 2-pair subset must decode it
    path.write_bytes(verification_bin_bytes(blobs, same.tolist(), 2))
    with pytest.raises(DatasetError, match=r"lfw\.bin: image 2 \(first of pair 1\) is not a readable"):
        read_verification_bin(path, max_pairs=2)
    blobs[2] = encode_faces(images[2:3])[0]
    blobs[0] = b"broken"  # pair 0, a same pair: decoded only by the subsets that hold it
    path.write_bytes(verification_bin_bytes(blobs, same.tolist(), 2))
    outcomes = set()
    for seed in range(8):
        try:
            vset = read_verification_bin(path, max_pairs=2, seed=seed)
        except DatasetError as e:
            assert "image 0 (first of pair 0)" in str(e)
            outcomes.add("pair 0")
        else:
            assert vset.same.tolist() == [False, True] and vset.faces.shape == (4, 3, 112, 112)
            assert "2 of 3 pairs" in vset.source
            outcomes.add("pair 2")
    assert outcomes == {"pair 0", "pair 2"}


class _RunsCode:
    def __reduce__(self):
        return (_side_effect, ("echo pwned",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_global_and_reduce_are_refused_unrun(tmp_path, protocol):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_RunsCode(), b"ok"], [True]), protocol=protocol))
    with pytest.raises(DatasetError, match=r"evil\.bin is not a plain verification set.*_side_effect.*never runs"):
        read_verification_bin(path)


def test_os_system_is_refused(tmp_path):
    """The classic: GLOBAL posix.system + REDUCE, hand-written."""
    path = tmp_path / "lfw.bin"
    path.write_bytes(b"\x80\x02cposix\nsystem\nq\x00U\x0btouch /tmp/x\x85R.")
    with pytest.raises(DatasetError, match=r"a reference to posix\.system \(opcode GLOBAL at byte 2\)"):
        read_verification_pickle(path)


def test_numpy_arrays_are_refused_with_the_conversion(tmp_path, faces):
    images, same = faces
    path = tmp_path / "eval_pack.bin"
    path.write_bytes(numpy_array_bin_bytes(images, same.tolist()))
    with pytest.raises(DatasetError, match=r"numpy.*build_eval_pack\.py.*bytes\(b\)"):
        read_verification_pickle(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ((["a str"], [True]), r"SHORT_BINUNICODE|BINUNICODE"),  # text, not bytes
        (([b"x", b"y"], [1]), r"BININT1"),  # an int, not a bool
        (([b"x", b"y"], [1.5]), r"BINFLOAT"),
        (({b"x": b"y"}, [True]), r"EMPTY_DICT"),
    ],
)
def test_other_types_are_refused(tmp_path, payload, message):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(DatasetError, match=message):
        read_verification_pickle(path)


def test_wrong_structure_and_truncation(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(verification_bin_bytes([b"a"], [True], 2))
    with pytest.raises(DatasetError, match="holds 1 images for 1 pairs"):
        read_verification_pickle(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True], [False]), protocol=4))
    with pytest.raises(DatasetError, match="does not hold the pair"):
        read_verification_pickle(path)
    path.write_bytes(pickle.dumps(([b"a", True], [True]), protocol=4))
    with pytest.raises(DatasetError, match="image 1 is a bool"):
        read_verification_pickle(path)
    path.write_bytes(verification_bin_bytes([b"a", b"b"], [True], 2)[:-5])
    with pytest.raises(DatasetError, match="not a readable pickle"):
        read_verification_pickle(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_verification_pickle(tmp_path / "missing.bin")


def test_self_referencing_list_is_refused_not_looped(tmp_path):
    """Memo GET can make a list contain itself: a type error, not a hang."""
    path = tmp_path / "loop.bin"
    # ([L], [True]) where L = [L]: EMPTY_LIST BINPUT 0 BINGET 0 APPEND ...
    path.write_bytes(b"\x80\x02]q\x00h\x00a]q\x01\x88a\x86q\x02.")
    with pytest.raises(DatasetError, match="image 0 is a list"):
        read_verification_pickle(path)


@pytest.mark.parametrize(
    ("pickle_bytes", "message"),
    [
        (b"\x80\x02]r\xff\xff\xff\x7f.", r"memo index 2147483647 out of order \(the next is 0\)"),  # 1 GiB on 3.11
        (b"\x80\x02]q\x05.", r"memo index 5 out of order"),
        (b"\x80\x02]q\x00j\xff\xff\xff\x00.", r"memo index 16777215 that was never put"),
        (b"(lp99\n.", r"memo index 99 out of order"),  # protocol 0's PUT
    ],
)
def test_memo_indices_out_of_order_are_refused_before_unpickling(tmp_path, pickle_bytes, message):
    """Issue 18: a 13-byte .bin naming memo index 2^31 made Python 3.11's unpickler reserve 1 GiB."""
    path = tmp_path / "memo.bin"
    path.write_bytes(pickle_bytes)
    with pytest.raises(DatasetError, match=rf"{path.name} is not a plain verification set: .*{message}"):
        read_verification_pickle(path)


def test_a_file_larger_than_a_verification_set_is_refused_unread(tmp_path, monkeypatch):
    from f2d_core.msid_training.verification import bin_file

    path = tmp_path / "big.bin"
    path.write_bytes(verification_bin_bytes([b"a", b"b"], [True], 2))
    monkeypatch.setattr(bin_file, "MAX_BIN_BYTES", 16)
    with pytest.raises(DatasetError, match=r"big.bin is 0.0 GiB, more than the 0 GiB a verification set may be"):
        read_verification_pickle(path)


def _eps_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (112, 112)).save(buffer, "EPS")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels with no image data: decoding it would allocate them."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_eps_and_pixel_bombs_are_refused_before_any_decoder_runs(tmp_path, faces, monkeypatch):
    """Issue 18: only JPEG, PNG, WebP and BMP are opened (EPS would start Ghostscript), pixels counted first."""
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps"))
    good = encode_faces(faces[0][:1])[0]
    path = tmp_path / "eps.bin"
    path.write_bytes(verification_bin_bytes([good, _eps_bytes()], [True], 2))
    with pytest.raises(
        DatasetError, match=r"eps.bin: image 1 \(second of pair 0\) is not a readable face image: not a "
    ):
        read_verification_bin(path, workers=1)
    path.write_bytes(verification_bin_bytes([_png_claiming(9000, 9000), good], [True], 2))
    with pytest.raises(DatasetError, match=r"image 0 .*claims 9000x9000 pixels, more than the 1048576 allowed"):
        read_verification_bin(path, workers=1)
    assert "eps" not in opened
