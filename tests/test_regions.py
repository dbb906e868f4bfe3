"""Region masks for several people: layouts, face boxes, and the checks on a person's mask."""

from __future__ import annotations

import pytest
import torch

from f2d_core.conditioning.regions import RegionError, face_box_regions, layout_masks, person_mask


def test_halves_split_the_width_and_cover_everything_once_without_overlap():
    masks = layout_masks("left/right halves", 64, 96)
    assert masks.shape == (2, 64, 96)
    assert masks[0, :, :48].eq(1).all() and masks[0, :, 48:].eq(0).all()
    assert masks[1, :, 48:].eq(1).all() and masks[1, :, :48].eq(0).all()


def test_overlap_widens_each_region_into_its_neighbours_by_a_fraction_of_a_region():
    thirds = layout_masks("thirds (left to right)", 32, 96, overlap=0.25)  # regions 32 wide, 8 px overlap
    assert thirds.shape == (3, 32, 96)
    assert thirds[0, 0].nonzero().flatten().tolist() == list(range(0, 40))
    assert thirds[1, 0].nonzero().flatten().tolist() == list(range(24, 72))
    assert thirds[2, 0].nonzero().flatten().tolist() == list(range(56, 96))


def test_grid_numbers_regions_row_by_row():
    grid = layout_masks("2x2 grid", 64, 64)
    assert grid.shape == (4, 64, 64)
    assert grid[1, 0, 63] == 1 and grid[1, 63, 63] == 0  # top right
    assert grid[2, 63, 0] == 1 and grid[2, 0, 0] == 0  # bottom left
    assert grid.sum(dim=0).eq(1).all()


def test_bad_layout_or_overlap_is_a_clear_error():
    with pytest.raises(RegionError, match="Unknown layout 'rows'"):
        layout_masks("rows", 8, 8)
    with pytest.raises(RegionError, match="between 0"):
        layout_masks("2x2 grid", 8, 8, overlap=0.6)


def test_face_boxes_become_masks_left_to_right_grown_by_a_fraction_of_the_box():
    boxes = [(60.0, 10.0, 80.0, 30.0), (10.0, 10.0, 30.0, 30.0)]  # right face first, as a detector sorts by size
    masks = face_box_regions(boxes, 40, 100, grow=0.25)
    assert masks.shape == (2, 40, 100)
    assert masks[0, 20].nonzero().flatten().tolist() == list(range(5, 35))  # the left face, 5 px grown
    assert masks[1, 20].nonzero().flatten().tolist() == list(range(55, 85))
    assert masks[0, :, 20].nonzero().flatten().tolist() == list(range(5, 35))
    with pytest.raises(RegionError, match="No face found"):
        face_box_regions([], 40, 100)


def test_person_mask_fits_the_latent_of_its_image():
    masks = layout_masks("left/right halves", 64, 96)
    mask = person_mask(masks, 2, (8, 12))
    assert mask.shape == (1, 64, 96) and torch.equal(mask, masks[1:2])
    assert person_mask(torch.ones(8, 12), 1, (8, 12)).shape == (1, 8, 12)  # the latent's own size
    assert person_mask(torch.ones(1, 68, 100), 1, (8, 12)).shape == (1, 68, 100)  # a photo VAE-encoded to 8x12
    painted = torch.zeros(1, 1023, 1023)
    painted[:, :, :511] = 1.0  # a hand-painted left half, one pixel short of 1024x1024
    resized = person_mask(painted, 1, (128, 128))
    assert resized.shape == (1, 1024, 1024)
    assert resized[0, :, :500].min() == 1.0 and resized[0, :, 524:].max() == 0.0


def test_person_mask_errors_name_the_person_and_the_fix():
    masks = layout_masks("left/right halves", 64, 96)
    with pytest.raises(RegionError, match=r"Person 3 has no region: masks holds 2 mask\(s\)"):
        person_mask(masks, 3, (8, 12))
    with pytest.raises(RegionError, match=r"Person 1's mask is 96x64 pixels, but the latent is for a 128x128 image"):
        person_mask(masks, 1, (16, 16))  # 3:2 against 1:1: another shape, refused rather than stretched
    empty = masks.clone()
    empty[1] = 0
    with pytest.raises(RegionError, match=r"Person 2's mask .* is empty"):
        person_mask(empty, 2, (8, 12))
