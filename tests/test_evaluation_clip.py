"""Prompt fidelity: CLIP score and directional CLIP with transformers and open_clip folders; wrong kinds refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from f2d_core.errors import EvaluationError, WeightFileError
from f2d_core.evaluation.clip_models import load_clip_scorer
from f2d_core.evaluation.clip_score import clip_scores, directional_clip_scores, scoring_prompt
from tests.support import tiny_clip

IMAGES = torch.rand(3, 48, 40, 3, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a photo of f l as a knight", "f l at the Grand Canyon", "a photo of (f l:1.2) smiling"]


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip.write_transformers_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def test_the_identifier_is_scored_as_a_person() -> None:
    assert scoring_prompt("A photo of f l as a chef") == "A photo of a person as a chef"
    assert scoring_prompt("(f l:1.2) in Rome, f l again") == "a person in Rome, a person again"
    assert scoring_prompt("a flute player") == "a flute player"


def test_clip_score_is_the_models_own_cosine(transformers_folder: Path) -> None:
    """Against CLIPModel.forward with our pixel values: logits_per_image / logit_scale on the diagonal."""
    from transformers import AutoTokenizer, CLIPModel

    scorer = load_clip_scorer(transformers_folder)
    ours = clip_scores(scorer, IMAGES, PROMPTS)
    model = CLIPModel.from_pretrained(str(transformers_folder)).eval()
    tokens = AutoTokenizer.from_pretrained(str(transformers_folder))([scoring_prompt(p) for p in PROMPTS], padding=True)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens["input_ids"]),
            attention_mask=torch.tensor(tokens["attention_mask"]),
            pixel_values=scorer.preprocess(IMAGES),
        )
    expected = out.logits_per_image.diagonal() / model.logit_scale.exp()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert scorer.preprocess(IMAGES).shape == (3, 3, tiny_clip.IMAGE_SIZE, tiny_clip.IMAGE_SIZE)


def test_directional_clip_is_image_change_against_text_change(transformers_folder: Path) -> None:
    scorer = load_clip_scorer(transformers_folder)
    reference = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(1))
    ours = directional_clip_scores(scorer, IMAGES, PROMPTS, reference)
    e_img, e_ref = scorer.encode_images(IMAGES), scorer.encode_images(reference)
    e_txt = scorer.encode_texts([scoring_prompt(p) for p in PROMPTS])
    e_person = scorer.encode_texts(["A photo of a person"])
    expected = functional.cosine_similarity(e_img - e_ref, e_txt - e_person, dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_open_clip_folder_scores_like_open_clip(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    folder = tiny_clip.write_open_clip(tmp_path / "tiny_open_clip")
    scorer = load_clip_scorer(folder)
    ours = clip_scores(scorer, IMAGES, PROMPTS)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        image = functional.normalize(model.encode_image(scorer.preprocess(IMAGES)), dim=-1)
        text = functional.normalize(model.encode_text(tokenizer([scoring_prompt(p) for p in PROMPTS])), dim=-1)
    torch.testing.assert_close(ours, (image * text).sum(-1), atol=1e-5, rtol=1e-5)


def test_wrong_kinds_of_clip_files_are_named(tmp_path: Path) -> None:
    vision = tiny_clip.write_clip_vision_only(tmp_path / "clip_vision")
    with pytest.raises(WeightFileError, match=r"clip_vision holds a CLIP image tower only"):
        load_clip_scorer(vision)
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    (siglip / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(WeightFileError, match=r"siglip holds a SigLIP model"):
        load_clip_scorer(siglip)
    single = tmp_path / "clip_l.safetensors"
    single.write_bytes(b"\0" * 16)
    with pytest.raises(WeightFileError, match=r"clip_l.safetensors is a single file"):
        load_clip_scorer(single)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightFileError, match=r"empty is not a CLIP model folder"):
        load_clip_scorer(empty)


def test_prompt_lists_must_fit_the_batch(transformers_folder: Path) -> None:
    scorer = load_clip_scorer(transformers_folder)
    with pytest.raises(EvaluationError, match="the prompt list is empty"):
        clip_scores(scorer, IMAGES, [])
    with pytest.raises(EvaluationError, match=r"prompt\(s\) \[2\] are empty"):
        clip_scores(scorer, IMAGES, ["a", " ", "c"])
    with pytest.raises(EvaluationError, match="2 prompts for 3 images"):
        clip_scores(scorer, IMAGES, ["a", "b"])
    assert clip_scores(scorer, IMAGES, ["one prompt for all"]).shape == (3,)


def test_antialiased_resize_runs_on_the_cpu_whatever_the_scorers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apple's MPS has no antialiased bicubic kernel before torch 2.8 (pytorch/pytorch#149378): the resize
    must stay on the CPU and only the crop go to the scorer's device (here "meta", a real non-CPU device)."""
    from f2d_core.evaluation import clip_models

    resized_on = []
    interpolate = functional.interpolate

    def spy(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        resized_on.append(x.device.type)
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(clip_models.functional, "interpolate", spy)
    scorer = clip_models.CLIPScorer("t", None, None, 32, (0.5,) * 3, (0.25,) * 3, torch.nn.Linear(1, 1, device="meta"))
    pixels = scorer.preprocess(IMAGES)
    assert resized_on == ["cpu"]
    assert pixels.device.type == "meta" and pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
