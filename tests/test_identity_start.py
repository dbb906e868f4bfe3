"""Identity start: the class-noun prompt and the sampling ranges of the two phases."""

from __future__ import annotations

import pytest

from f2d_core.conditioning.identity_start import class_prompt, timestep_ranges
from f2d_core.errors import PromptError


def test_class_prompt_replaces_every_identifier_keeping_weights():
    assert class_prompt("a photo of f l as a knight", "f l") == "a photo of person as a knight"
    assert class_prompt("(F  l:1.2) and f l, smiling", "f l", "woman") == "(woman:1.2) and woman, smiling"


def test_class_prompt_leaves_words_that_only_contain_the_letters():
    assert class_prompt("half lit, of lace, f l.", "f l") == "half lit, of lace, person."


def test_class_prompt_errors():
    with pytest.raises(PromptError, match='does not contain the identifier "f l"'):
        class_prompt("a photo of a knight", "f l")
    with pytest.raises(PromptError, match="class_noun is empty"):
        class_prompt("a photo of f l", "f l", "  ")


def test_ranges_split_sampling_at_identity_start_and_vanish_at_zero():
    assert timestep_ranges(0.0) == (None, {})
    assert timestep_ranges(0.3) == (
        {"start_percent": 0.0, "end_percent": 0.3},
        {"start_percent": 0.3, "end_percent": 1.0},
    )
    for bad in (-0.1, 1.0):
        with pytest.raises(PromptError, match="identity_start"):
            timestep_ranges(bad)
