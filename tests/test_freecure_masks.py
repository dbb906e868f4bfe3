"""FreeCure's attribute words, masks from face-parser labels, and the sigma window."""

from __future__ import annotations

import pytest
import torch

from f2d_core.freecure.attributes import AttributeListError, attributes_in_prompt, parse_attribute_list
from f2d_core.freecure.gating import SigmaWindow
from f2d_core.freecure.masks import LayerMasks, attribute_mask, quarter_resolution


def test_words_match_on_boundaries_chair_is_not_hair():
    assert attributes_in_prompt("f l sitting on a chair").class_ids == []
    assert attributes_in_prompt("f l with an eyebrow piercing").attributes == {"eyebrows": (2, 3)}
    choice = attributes_in_prompt("f l with Blonde curly HAIR, wearing sunglasses")
    assert choice.attributes == {"hair": (17,), "glasses": (6,)} and choice.class_ids == [6, 17]
    assert attributes_in_prompt("f l with blue eyes").class_ids == [4, 5]


def test_expression_words_go_to_apg_and_unparsed_words_are_reported():
    choice = attributes_in_prompt("f l laughing, angry, with a beard and red hair")
    assert choice.expressions == ["laughing", "angry"] and choice.unparsed == ["beard"]
    assert choice.class_ids == [17]
    assert attributes_in_prompt("f l, unhappy").expressions == ["unhappy"]  # not "happy" inside "unhappy"


def test_an_explicit_list_overrides_the_prompt():
    assert parse_attribute_list("auto", "f l with red hair").class_ids == [17]
    assert parse_attribute_list("glasses, hat, 9", "f l with red hair, laughing").class_ids == [6, 9, 18]
    assert parse_attribute_list("glasses", "f l laughing").expressions == ["laughing"]
    with pytest.raises(AttributeListError, match="'chair' is not an attribute"):
        parse_attribute_list("chair", "f l")


def test_mask_pipeline_keeps_fully_inside_cells_then_resizes_nearest_to_each_layer():
    labels = torch.zeros(1, 64, 48, dtype=torch.long)
    labels[0, 8:40, 4:28] = 17  # hair
    labels[0, 40:48, 4:28] = 6  # glasses
    labels[0, 0:9, 30:33] = 17  # a sliver: 3 px wide, no full quarter-res cell
    full = attribute_mask(labels, [17, 6])
    assert full.sum() == 32 * 24 + 8 * 24 + 27 and not attribute_mask(labels, []).any()
    small = quarter_resolution(full)  # 16 x 12
    assert small.shape == (1, 16, 12)
    assert small[0, 2:12, 1:7].all() and small.sum() == 10 * 6 - 0  # borders of the 4x4 cells kept
    assert not small[0, :, 7:].any()  # the sliver is gone (erosion at the boundary)
    masks = LayerMasks(small)
    assert masks.at(8, 6).shape == (1, 8, 6)  # non-square layer
    tokens = masks.tokens(0, 8, 6)
    assert torch.equal(tokens, masks.at(8, 6)[0].flatten().nonzero()[:, 0])
    assert masks.tokens(0, 8, 6) is tokens  # cached


def test_sigma_window():
    window = SigmaWindow(high=10.0, low=1.0)
    assert window.contains(10.0) and window.contains(1.0) and not window.contains(0.5) and not window.contains(11)
    with pytest.raises(ValueError, match="empty"):
        SigmaWindow(high=1.0, low=2.0)


def test_apg_template_drops_the_expression_words_and_the_schedule_split():
    from f2d_core.freecure.apg import inversion_sigmas, start_index, template_prompt

    assert template_prompt("a photo of woman with red hair, laughing") == "a photo of woman with red hair"
    assert template_prompt("a photo of man, angry, wearing a hat") == "a photo of man, wearing a hat"
    assert template_prompt("a smiling woman") == "a woman"
    assert start_index(30, 0.5) == 15 and start_index(4, 0.5) == 2 and start_index(3, 1.0) == 0
    with pytest.raises(ValueError, match="apg_gamma"):
        start_index(30, 0.0)
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert torch.allclose(inversion_sigmas(sigmas, 2), torch.tensor([0.0, 1.0, 3.0]) + 1e-4)
