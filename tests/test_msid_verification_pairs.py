"""Verification pairs drawn from labelled faces: seeded, balanced, valid, each pair once; subsets of a .bin's pairs."""

from __future__ import annotations

import pytest
import torch

from f2d_core.errors import DatasetError
from f2d_core.msid_training.verification import pairs as pairs_module
from f2d_core.msid_training.verification.pairs import balanced_pair_subset, draw_pairs, pairs_from_dataset
from tests.support.identity_sets import IdentitySet


def check_pairs(labels: torch.Tensor, first, second, same, per_kind: int) -> None:
    assert len(first) == len(second) == len(same) == 2 * per_kind
    assert same.tolist() == [True] * per_kind + [False] * per_kind
    assert torch.equal(labels[first] == labels[second], same)
    assert bool((first < second).all())
    assert len({(a, b) for a, b in zip(first.tolist(), second.tolist(), strict=True)}) == 2 * per_kind


@pytest.mark.parametrize("faces", [60, 2000])  # enumerated (1770 pairs) and rejection-sampled (2 M pairs)
def test_pairs_are_valid_and_deterministic(faces):
    assert (faces * (faces - 1) // 2 > pairs_module.ENUMERATE_UP_TO) == (faces == 2000)
    labels = torch.randint(0, faces // 5, (faces,), generator=torch.Generator().manual_seed(3))
    first, second, same = draw_pairs(labels, 40, seed=7)
    check_pairs(labels, first, second, same, 40)
    again = draw_pairs(labels.tolist(), 40, seed=7)
    assert all(torch.equal(x, y) for x, y in zip((first, second, same), again, strict=True))
    other = draw_pairs(labels, 40, seed=8)
    assert not torch.equal(first, other[0])


def test_every_possible_pair_can_be_drawn():
    """3 identities x 2 photos: exactly 3 same pairs exist, and asking for 3 gives all of them."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    first, second, same = draw_pairs(labels, 3, seed=1)
    check_pairs(labels, first, second, same, 3)
    assert sorted(zip(first[:3].tolist(), second[:3].tolist(), strict=True)) == [(0, 1), (2, 3), (4, 5)]


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(DatasetError, match=r"6 faces of 3 identities allow 3 same-identity and 12 different"):
        draw_pairs(torch.tensor([0, 0, 1, 1, 2, 2]), 4)
    with pytest.raises(DatasetError, match="allow 0 same-identity"):
        draw_pairs(torch.arange(10), 1)


def test_pairs_from_a_dataset_hold_its_faces():
    """An in-memory set shaped as FaceRecognitionDataset: each pair's faces are the dataset's images."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(30) // 3
    images = torch.randint(0, 256, (30, 3, 112, 112), dtype=torch.uint8, generator=generator)
    data = IdentitySet(images, labels, [f"id{i}" for i in range(10)], source="held_out/")
    vset = pairs_from_dataset(data, 12, seed=4)
    first, second, same = draw_pairs(labels, 12, seed=4)
    assert torch.equal(vset.same, same) and len(vset) == 24
    assert torch.equal(vset.faces[vset.first], images[first])
    assert torch.equal(vset.faces[vset.second], images[second])
    assert len(vset.faces) == len(torch.unique(torch.cat([first, second])))
    assert vset.source.startswith("held_out/")


def test_balanced_subset():
    same = torch.tensor([True] * 10 + [False] * 3)
    keep = balanced_pair_subset(same, 6, seed=0)
    assert keep.tolist() == sorted(keep.tolist()) and len(keep) == 6
    assert int(same[keep].sum()) == 3
    keep = balanced_pair_subset(same, 10, seed=0)  # only 3 different pairs exist: the rest are same
    assert int((~same[keep]).sum()) == 3 and len(keep) == 10
    assert torch.equal(balanced_pair_subset(same, 6, seed=5), balanced_pair_subset(same, 6, seed=5))
    assert balanced_pair_subset(same, 50).tolist() == list(range(13))
    with pytest.raises(DatasetError, match="at least 2 pairs"):
        balanced_pair_subset(same, 1)
