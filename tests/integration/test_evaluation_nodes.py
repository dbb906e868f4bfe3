"""The scoring nodes in a real ComfyUI server: Face Similarity, CLIP Score and Best of N agree with f2d_core."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from f2d_core.evaluation.best_of_n import harmonic_mean, keep_best
from f2d_core.evaluation.clip_models import load_clip_scorer
from f2d_core.evaluation.clip_score import clip_scores, directional_clip_scores
from f2d_core.evaluation.face_similarity import identity_scores, largest_face_crops, person_embedding
from f2d_core.evaluation.recognition import load_face_recognizer
from f2d_core.faces.face_detection import FaceDetector
from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import PACK, loader
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

NODE_IDS = {
    "F2DLoadFaceRecognizer": "Load Face Recognizer",
    "F2DFaceSimilarity": "Face Similarity",
    "F2DLoadCLIPScorer": "Load CLIP Scorer",
    "F2DCLIPScore": "CLIP Score",
    "F2DBestOfN": "Best of N",
}
RECOGNIZER = f"{PACK}/w600k_r50.onnx"
PROMPT = "a photo of f l as a knight"


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """Two different "people" the synthetic detector finds, and a photo without a face (all 640x640)."""
    return {
        "a": si.face_photo(load_rgb(ASTRONAUT)),
        "b": si.face_photo(load_rgb(ALIGNED_CROP)),
        "none": np.zeros((640, 640, 3), np.uint8),
    }


@pytest.fixture(scope="module")
def uploaded(comfy_server: ComfyServer, photos: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: comfy_server.upload_image(Image.fromarray(v), f"f2d_eval_{k}.png") for k, v in photos.items()}


def scoring_graph(uploaded: dict[str, str], batch: tuple[str, ...] = ("a", "b", "none")) -> dict:
    """Encode photo a ("30") as the F2D face ("8"); Face Similarity ("9") of the batch of `batch` photos against it."""
    graph = {
        "1": loader(),
        "2": {"class_type": "F2DLoadFaceRecognizer", "inputs": {"recognition_model": RECOGNIZER}},
        "30": {"class_type": "LoadImage", "inputs": {"image": uploaded["a"]}},
        "8": {
            "class_type": "F2DEncodeFace",
            "inputs": {
                "f2d_model": ["1", 0],
                "image": ["30", 0],
                "face_index": 0,
                "if_no_face": "error",
                "pooling": "normalized_mean",
            },
        },
    }
    images = None
    for k, name in enumerate(batch):
        graph[f"l{k}"] = {"class_type": "LoadImage", "inputs": {"image": uploaded[name]}}
        if images is None:
            images = [f"l{k}", 0]
        else:
            graph[f"b{k}"] = {"class_type": "ImageBatch", "inputs": {"image1": images, "image2": [f"l{k}", 0]}}
            images = [f"b{k}", 0]
    graph["9"] = {
        "class_type": "F2DFaceSimilarity",
        "inputs": {
            "f2d_model": ["1", 0],
            "recognizer": ["2", 0],
            "images": images,
            "f2d_face": ["8", 0],
            "reference_images_are": "one person",
        },
    }
    return graph


def table_column(text: str, column: int) -> list[float]:
    """A numeric column of a node's score table (0 = first score column)."""
    rows = [line.split() for line in text.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]
    return [float(row[1 + column]) for row in rows]


@pytest.fixture(scope="module")
def core(comfy_models_dir: Path) -> dict:
    """The same models, loaded in the test process."""
    return {
        "detector": FaceDetector(comfy_models_dir / "insightface", PACK),
        "recognizer": load_face_recognizer(comfy_models_dir / "insightface" / "models" / RECOGNIZER),
        "clip": load_clip_scorer(comfy_models_dir / "clip_scoring" / "tiny_clip"),
    }


def test_scoring_nodes_are_listed_with_tooltips_and_find_the_models(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    for node_id, display in NODE_IDS.items():
        node = info[node_id]
        assert node["display_name"] == display and node["category"] == "face2diffusion"
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        assert all(len(spec) > 1 and spec[1].get("tooltip") for spec in inputs.values()), node_id
    recognizers = comfy_server.combo_options("F2DLoadFaceRecognizer", "recognition_model")
    assert recognizers[0] == RECOGNIZER and "not_a_recognizer.onnx" in recognizers
    assert not any("det_10g" in name for name in recognizers)
    assert "tiny_clip" in comfy_server.combo_options("F2DLoadCLIPScorer", "clip_model")


def test_face_similarity_scores_like_the_core(comfy_server, uploaded, photos, core) -> None:
    graph = scoring_graph(uploaded)
    graph["90"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 3]}}  # the previews output
    history = comfy_server.run(graph, timeout=300)
    output = history["outputs"]["9"]
    text = output["text"][0]
    served = table_column(text, 0)
    reference = person_embedding(
        core["recognizer"], largest_face_crops(core["detector"], core["recognizer"], [photos["a"]])
    )
    expected = identity_scores(
        core["detector"], core["recognizer"], [photos[k] for k in ("a", "b", "none")], reference[None]
    )
    assert served == pytest.approx(expected.scores.tolist(), abs=1e-4)
    assert served[0] > 0.99 and served[1] < served[0] and served[2] == 0.0
    assert "faces found in 67% of images" in text and text.splitlines()[3].split()[-1] == "no"
    assert comfy_server.output_images(history, "9") == []  # the node shows its table, no pictures to grow over
    previews = comfy_server.output_images(history, "90")
    assert [p.size for p in previews] == [(640, 640)] * 3
    assert np.asarray(previews[0])[:40, :200].max() > 200  # white label text on the (black) photo's corner


def test_clip_score_and_best_of_n_rank_like_the_core(comfy_server, uploaded, photos, core) -> None:
    graph = scoring_graph(uploaded)
    graph["20"] = {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_clip"}}
    graph["21"] = {
        "class_type": "F2DCLIPScore",
        "inputs": {
            "clip_scorer": ["20", 0],
            "images": graph["9"]["inputs"]["images"],
            "prompt": PROMPT,
            "reference_image": ["30", 0],
            "reference_prompt": "A photo of a person",
        },
    }
    graph["22"] = {
        "class_type": "F2DBestOfN",
        "inputs": {
            "images": graph["9"]["inputs"]["images"],
            "keep": 2,
            "rank_by": "prompt",
            "identity_scores": ["9", 0],
            "prompt_scores": ["21", 0],
        },
    }
    graph["23"] = {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}}
    history = comfy_server.run(graph, timeout=300)
    batch = torch.from_numpy(np.stack([photos[k] for k in ("a", "b", "none")])).float() / 255
    clip = clip_scores(core["clip"], batch, [PROMPT])
    dclip = directional_clip_scores(core["clip"], batch, [PROMPT], batch[:1])
    clip_text = history["outputs"]["21"]["text"][0]
    assert table_column(clip_text, 0) == pytest.approx(clip.tolist(), abs=1e-4)
    assert table_column(clip_text, 1) == pytest.approx(dclip.tolist(), abs=1e-4)
    kept = keep_best(clip, 2)
    best_text = history["outputs"]["22"]["text"][0]
    assert best_text.startswith("best 2 of 3 by prompt")
    assert [int(line.split()[0]) - 1 for line in best_text.splitlines()[2:]] == kept.tolist()
    assert [p.size for p in comfy_server.output_images(history, "23")] == [(640, 640)] * 2
    identity = torch.tensor(table_column(history["outputs"]["9"]["text"][0], 0))
    assert table_column(best_text, 3) == pytest.approx(harmonic_mean(identity, clip)[kept].tolist(), abs=2e-4)


def test_open_clip_folder_scores_in_the_server(comfy_server, uploaded) -> None:
    pytest.importorskip("open_clip")
    graph = {
        "1": {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_open_clip"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": uploaded["a"]}},
        "3": {"class_type": "F2DCLIPScore", "inputs": {"clip_scorer": ["1", 0], "images": ["2", 0], "prompt": PROMPT,
                                                       "reference_prompt": "A photo of a person"}},
    }  # fmt: skip
    text = comfy_server.run(graph, timeout=300)["outputs"]["3"]["text"][0]
    assert len(table_column(text, 0)) == 1


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph, timeout=300)
    assert server.object_info("F2DFaceSimilarity")  # the server keeps serving after the node error
    return info.value


def test_bad_inputs_get_clear_errors(comfy_server, uploaded) -> None:
    graph = scoring_graph(uploaded)
    graph["2"]["inputs"]["recognition_model"] = "not_a_recognizer.onnx"
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DLoadFaceRecognizer"
    assert "not_a_recognizer.onnx is not a face recogniser" in error.exception_message

    graph = {
        "1": {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "clip_vision_only"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": uploaded["a"]}},
        "3": {"class_type": "F2DCLIPScore", "inputs": {"clip_scorer": ["1", 0], "images": ["2", 0], "prompt": PROMPT,
                                                       "reference_prompt": "A photo of a person"}},
    }  # fmt: skip
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DLoadCLIPScorer" and "a CLIP image tower only" in error.exception_message

    graph = scoring_graph(uploaded)
    graph["22"] = {
        "class_type": "F2DBestOfN",
        "inputs": {"images": graph["9"]["inputs"]["images"], "keep": 1, "rank_by": "harmonic mean",
                   "identity_scores": ["9", 0]},
    }  # fmt: skip
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DBestOfN" and "needs prompt scores: connect CLIP Score" in error.exception_message


def test_a_batch_without_any_face_scores_zero_and_best_of_n_keeps_it(comfy_server, uploaded) -> None:
    """No face in any image (a helmet): the run goes on, the scores are 0, and no image is thrown away."""
    graph = scoring_graph(uploaded, batch=("none", "none"))
    graph["22"] = {
        "class_type": "F2DBestOfN",
        "inputs": {"images": graph["9"]["inputs"]["images"], "keep": 1, "rank_by": "identity",
                   "identity_scores": ["9", 0]},
    }  # fmt: skip
    graph["23"] = {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}}
    history = comfy_server.run(graph, timeout=300)
    text = history["outputs"]["9"]["text"][0]
    assert table_column(text, 0) == [0.0, 0.0] and "no face in 2 of 2 image(s): they score 0" in text
    best = history["outputs"]["22"]["text"][0]
    assert best.startswith("best 2 of 2 by identity") and "kept the whole batch in its order" in best
    assert len(comfy_server.output_images(history, "23")) == 2


def test_faces_found_but_none_like_the_reference_are_not_called_no_face(comfy_server, comfy_models_dir) -> None:
    """A reference with a white texture and images of a black-textured face, scored by a linear stand-in
    recogniser (the IResNet one's embeddings all lie within 50 degrees of each other): the faces are found,
    their similarity is negative and clipped to 0; Best of N says so instead of "no face found"."""
    folder = comfy_models_dir / "insightface" / "models" / "f2d_linear_recognizer"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(si.build_recognition_model(), str(folder / "w600k_r50.onnx"))
    white, black = (si.face_photo(np.full((64, 64, 3), value, np.uint8)) for value in (255, 0))
    names = {
        k: comfy_server.upload_image(Image.fromarray(v), f"f2d_eval_{k}.png") for k, v in (("a", white), ("k", black))
    }
    graph = scoring_graph(names, batch=("k", "k"))
    graph["2"]["inputs"]["recognition_model"] = "f2d_linear_recognizer/w600k_r50.onnx"
    del graph["9"]["inputs"]["f2d_face"]
    graph["9"]["inputs"]["reference_images"] = ["30", 0]  # the white-textured photo
    graph["22"] = {
        "class_type": "F2DBestOfN",
        "inputs": {"images": graph["9"]["inputs"]["images"], "keep": 1, "rank_by": "identity",
                   "identity_scores": ["9", 0]},
    }  # fmt: skip
    history = comfy_server.run(graph, timeout=300)
    text = history["outputs"]["9"]["text"][0]
    assert table_column(text, 0) == [0.0, 0.0] and "faces found in 100% of images" in text
    best = history["outputs"]["22"]["text"][0]
    assert "faces found in 2 of 2 image(s), but none looks like the reference" in best, best
    assert "no face found" not in best and "kept the whole batch in its order" in best


def test_several_reference_people_each_find_their_own_face(comfy_server, uploaded) -> None:
    """Reference photos a and b as two people: an image of a scores ~0.5 (a found, b not), like b's image."""
    graph = scoring_graph(uploaded, batch=("a", "b"))
    graph["r0"] = {"class_type": "LoadImage", "inputs": {"image": uploaded["a"]}}
    graph["r1"] = {"class_type": "LoadImage", "inputs": {"image": uploaded["b"]}}
    graph["rb"] = {"class_type": "ImageBatch", "inputs": {"image1": ["r0", 0], "image2": ["r1", 0]}}
    del graph["9"]["inputs"]["f2d_face"]
    graph["9"]["inputs"].update(reference_images=["rb", 0], reference_images_are="one person per image")
    scores = table_column(comfy_server.run(graph, timeout=300)["outputs"]["9"]["text"][0], 0)
    assert scores == pytest.approx([0.5, 0.5], abs=0.01)


# The face detector's and the recogniser's converted graphs, the CLIP scorer's model.
SCORING_MODELS = Counter({"OnnxModule": 2, "CLIPNetworks": 1})


def _scoring_models(server: ComfyServer) -> Counter:
    loaded = Counter(m["class"] for m in server._get("/f2d_test/loaded_models").json())
    return Counter({name: loaded[name] for name in SCORING_MODELS if loaded[name]})


def _free_all(server: ComfyServer) -> None:
    """POST /free, then wait until the scoring models are unloaded."""
    server.free(unload_models=True, free_memory=True)
    deadline = time.monotonic() + 30
    while _scoring_models(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _scoring_models(server) == Counter(), "the scoring models are still loaded after POST /free"


def test_scoring_models_are_under_comfyui_model_management(comfy_server, uploaded) -> None:
    """Loaded by ComfyUI for each use and unloaded by "Free model and node cache", not held on its GPU for good."""
    _free_all(comfy_server)  # what earlier tests loaded (another CLIP scorer)
    graph = scoring_graph(uploaded, ("a",))
    graph["20"] = {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_clip"}}
    graph["21"] = {
        "class_type": "F2DCLIPScore",
        "inputs": {
            "clip_scorer": ["20", 0],
            "images": ["l0", 0],
            "prompt": PROMPT,
            "reference_prompt": "A photo of a person",
        },
    }
    first = comfy_server.run(graph, timeout=300)["outputs"]["21"]["text"][0]
    assert _scoring_models(comfy_server) == SCORING_MODELS

    _free_all(comfy_server)
    again = comfy_server.run(graph, timeout=300)["outputs"]["21"]["text"][0]
    assert _scoring_models(comfy_server) == SCORING_MODELS
    assert table_column(again, 0) == table_column(first, 0)
