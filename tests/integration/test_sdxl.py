"""SDXL in a real ComfyUI server, on the tiny SDXL (tests/support/tiny_sdxl.py): detection, S* in both towers equal to
a textual-inversion file, the pooled vector's source, regional people, and every family mismatch named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_library_run import run_library_script
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.conditioning_files import SavedEntry, read_conditioning
from tests.support.f2d_graphs import CHECKPOINT, loader, save_conditioning
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb
from tests.support.tiny_sdxl import TinySDXL, tiny_refiner_unet_config

SCRIPTS = Path(__file__).parent / "library_scripts"
SDXL_CKPT = "f2d_tiny_sdxl.safetensors"
SDXL_MAPPER = "f2d_test_sdxl_mapper.safetensors"
PROMPT = "a photo of f l as a knight"
LONG_PROMPT = " ".join(["a"] * 80) + " and f l as a knight"  # the identifier in the second 77-token window
WIDTH, HEIGHT = 128, 64


def sdxl_loader() -> dict:
    """The probe loader on the tiny SDXL (MODEL 0, CLIP 1, VAE 2)."""
    return {"class_type": "F2DTestTinySDXLCheckpointLoader", "inputs": {"ckpt_name": SDXL_CKPT}}


@pytest.fixture(scope="module")
def sdxl_server(comfy_server: ComfyServer, tiny_sdxl: TinySDXL, tiny_sdxl_mapper: Path) -> ComfyServer:
    """The shared server, with the tiny SDXL listed and a seeded SDXL mapper (class_prompt) in face2diffusion/."""
    assert tiny_sdxl_mapper.name == SDXL_MAPPER
    return comfy_server


@pytest.fixture(scope="module")
def photos(comfy_server: ComfyServer) -> dict[str, str]:
    a, b = si.face_photo(load_rgb(ASTRONAUT)), si.face_photo(load_rgb(ALIGNED_CROP))
    return {
        "a": comfy_server.upload_image(Image.fromarray(a), "f2d_sdxl_a.png"),
        "b": comfy_server.upload_image(Image.fromarray(b), "f2d_sdxl_b.png"),
    }


def _faces_graph(photos: dict[str, str], mapper: str = SDXL_MAPPER) -> dict:
    """Tiny SDXL ("1"), Load MSID Encoder with `mapper` ("2"), Encode Face for photos a and b ("4a", "4b")."""
    graph = {"1": sdxl_loader(), "2": loader(mapper=mapper)}
    for key in ("a", "b"):
        graph[f"3{key}"] = {"class_type": "LoadImage", "inputs": {"image": photos[key]}}
        graph[f"4{key}"] = {
            "class_type": "F2DEncodeFace",
            "inputs": {
                "f2d_model": ["2", 0],
                "image": [f"3{key}", 0],
                "face_index": 0,
                "if_no_face": "error",
                "pooling": "normalized_mean",
            },
        }
        # The same face with the pooled vector of the prompt with the person (ComfyUI's own), not its mapper's.
        graph[f"p{key}"] = {
            "class_type": "F2DPooledSource",
            "inputs": {"f2d_face": [f"4{key}", 0], "pooled_source": "identity_prompt"},
        }
    return graph


def _apply(face: str, text: str, clip: list | None = None, pooled_source: str | None = None, **extra) -> dict:
    """Apply F2D Tokens with face a or b; pooled_source "identity_prompt" takes it through F2D Pooled Source."""
    source = f"p{face}" if pooled_source == "identity_prompt" else f"4{face}"
    inputs = {"clip": clip or ["1", 1], "text": text, "f2d_face": [source, 0]}
    return {"class_type": "F2DApplyTokens", "inputs": inputs | extra}


def _encode(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}


def _saved(server: ComfyServer, graph: dict, sources: dict[str, list]) -> dict[str, list[SavedEntry]]:
    """Run `graph` with a probe on each source; {name: its entries}."""
    for k, (name, source) in enumerate(sources.items()):
        save_conditioning(graph, source, name, f"9{k}")
    server.run(graph, timeout=300)
    return {name: read_conditioning(Path(server.output_dir) / f"{name}.safetensors") for name in sources}


def _failure(server: ComfyServer, graph: dict, source: list) -> ExecutionFailed:
    save_conditioning(graph, source, "never_written", "99")
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph, timeout=300)
    assert server.object_info("F2DApplyTokens")  # the server keeps serving after the node error
    return info.value


@pytest.fixture(scope="module")
def embeddings(sdxl_server: ComfyServer, photos: dict[str, str]) -> dict[str, str]:
    """Save F2D Face for a and b: each also writes an SDXL embedding file; {face: embedding name}."""
    graph = _faces_graph(photos)
    for key in ("a", "b"):
        graph[f"5{key}"] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": [f"4{key}", 0], "name": f"sdxl_{key}"}}
    history = sdxl_server.run(graph, timeout=300)
    names = {}
    for key in ("a", "b"):
        text = history["outputs"][f"5{key}"]["text"][0]
        names[key] = re.search(r"embedding:(\S+) in SDXL prompts", text).group(1)
    return names


def test_tiny_sdxl_is_detected_as_sdxl(tiny_sdxl: TinySDXL, comfy_server):
    report = tiny_sdxl.verification
    assert (report["model_config"], report["model_base"], report["model_type"]) == ("SDXL", "SDXL", "EPS")
    assert (report["latent_format"], report["clip"], report["vae"]) == ("SDXL", "SDXLClipModel", "TAESD")
    assert abs(report["vae_scale"] - 0.13025) < 1e-6 and report["unet_parameters"] == 133_883_524
    assert (report["cond_shape"], report["pooled_shape"], report["y_shape"]) == ([1, 77, 2048], [1, 1280], [1, 2816])
    assert report["denoised_finite"] and not report["warnings"]
    assert SDXL_CKPT in comfy_server.combo_options("F2DTestTinySDXLCheckpointLoader", "ckpt_name")


def test_sdxl_injection_equals_textual_inversion(sdxl_server, photos, embeddings):
    """S* in both towers == the same vectors as a ComfyUI embedding file, exactly: plain, weighted, second window;
    the pooled vector follows its source; Expression Reference re-maps S* for SDXL."""
    emb = embeddings["a"]
    graph = _faces_graph(photos)
    ident = {"pooled_source": "identity_prompt"}
    graph |= {
        "10": _apply("a", PROMPT, **ident),
        "11": _encode(f"a photo of embedding:{emb} as a knight"),
        "12": _apply("a", "a photo of (f l:1.3) as a knight", **ident),
        "13": _encode(f"a photo of (embedding:{emb}:1.3) as a knight"),
        "14": _apply("a", LONG_PROMPT, **ident),
        "15": _encode(LONG_PROMPT.replace("f l", f"embedding:{emb}")),
        "16": _apply("a", PROMPT),  # as trained: class_prompt
        "17": _encode("a photo of person as a knight"),
        "18": _encode(PROMPT),
        "19": {
            "class_type": "F2DExpressionReference",
            "inputs": {
                "f2d_model": ["2", 0],
                "image": ["3b", 0],
                "expression_model": "epoch_20.pth",
                "face_index": 0,
                "strength": 1.0,
            },
        },
        "20": _apply("a", PROMPT, expression=["19", 0], **ident),
    }
    names = [f"sx_{n}" for n in (*range(10, 19), 20)]
    saved = _saved(sdxl_server, graph, {name: [name[3:], 0] for name in names})
    (ours, ti), (w_ours, w_ti), (l_ours, l_ti) = [
        (saved[f"sx_{a}"][0], saved[f"sx_{b}"][0]) for a, b in ((10, 11), (12, 13), (14, 15))
    ]
    for a, b in ((ours, ti), (w_ours, w_ti), (l_ours, l_ti)):
        assert a.cond.shape == b.cond.shape and torch.equal(a.cond, b.cond)
        assert torch.equal(a.pooled, b.pooled)
    assert list(ours.cond.shape) == [1, 77, 2048] and list(l_ours.cond.shape) == [1, 154, 2048]
    assert not torch.equal(w_ours.cond, ours.cond)
    # Rows before the identifier equal plain CLIPTextEncode; row 4 differs in both towers' halves.
    plain = saved["sx_18"][0].cond
    assert torch.equal(ours.cond[0, :4], plain[0, :4])
    assert (ours.cond[0, 4, :768] != plain[0, 4, :768]).any() and (ours.cond[0, 4, 768:] != plain[0, 4, 768:]).any()
    # The pooled vector follows the source: class_prompt = the class prompt's, same words.
    trained = saved["sx_16"][0]
    assert torch.equal(trained.cond, ours.cond) and torch.equal(trained.pooled, saved["sx_17"][0].pooled)
    assert not torch.equal(trained.pooled, ours.pooled)
    # Expression Reference re-maps S* with the SDXL mapper: the words change in both towers, nothing before them.
    expressive = saved["sx_20"][0].cond
    assert torch.equal(expressive[0, :4], ours.cond[0, :4])
    assert (expressive[0, 4, :768] != ours.cond[0, 4, :768]).any() and (
        expressive[0, 4, 768:] != ours.cond[0, 4, 768:]
    ).any()


def test_sdxl_regions_carry_their_own_person(sdxl_server, photos, embeddings):
    """Two people with Add F2D Person == plain regional prompts (ConditioningSetMask) with their embeddings."""
    graph = _faces_graph(photos)
    scene = "two friends on a beach"
    prompts = {"a": "a photo of f l, smiling", "b": "a photo of f l wearing a hat"}
    graph |= {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "10": _encode(scene),
        "11": {
            "class_type": "F2DRegionLayout",
            "inputs": {"latent": ["5", 0], "layout": "left/right halves", "overlap": 0.25},
        },
    }
    previous = ["10", 0]
    for n, key in enumerate(("a", "b"), start=1):
        graph[f"2{n}"] = {
            "class_type": "F2DAddPerson",
            "inputs": {
                "conditioning": previous,
                "clip": ["1", 1],
                "latent": ["5", 0],
                "f2d_face": [f"p{key}", 0],  # through F2D Pooled Source: the identity prompt's pooled vector
                "text": prompts[key],
                "masks": ["11", 0],
                "person": n,
                "strength": 1.0 + 0.5 * (n - 1),
            },
        }
        previous = [f"2{n}", 0]
        graph[f"3{n}"] = _encode(prompts[key].replace("f l", f"embedding:{embeddings[key]}"))
    # identity_start per region: person b with a class-noun phase.
    graph["25"] = {**graph["22"], "inputs": {**graph["22"]["inputs"], "identity_start": 0.3}}
    saved = _saved(
        sdxl_server, graph, {"rg_people": ["22", 0], "rg_a": ["31", 0], "rg_b": ["32", 0], "rg_delayed": ["25", 0]}
    )
    scene_e, a_e, b_e = saved["rg_people"]
    assert scene_e.mask is None and "mask" not in scene_e.options.get("tensor_options", [])
    for entry, ti, strength in ((a_e, saved["rg_a"][0], 1.0), (b_e, saved["rg_b"][0], 1.5)):
        assert torch.equal(entry.cond, ti.cond) and torch.equal(entry.pooled, ti.pooled)
        assert entry.mask is not None and entry.options["mask_strength"] == strength
    assert not torch.equal(a_e.mask, b_e.mask) and not torch.equal(a_e.cond, b_e.cond)
    delayed = saved["rg_delayed"]
    assert len(delayed) == 4  # scene, a, then b's class-noun phase and b's S* phase
    assert delayed[2].options["end_percent"] == pytest.approx(0.3) and delayed[3].options[
        "start_percent"
    ] == pytest.approx(0.3)
    assert torch.equal(delayed[3].cond, b_e.cond) and not torch.equal(delayed[2].cond, b_e.cond)


def test_sd1_face_on_sdxl_clip_is_a_node_error(sdxl_server, photos):
    graph = _faces_graph(photos, mapper="mapping.pt")
    graph["10"] = _apply("a", PROMPT)
    error = _failure(sdxl_server, graph, ["10", 0])
    assert error.node_type == "F2DApplyTokens"
    assert "for this F2D face, which is for SD1.x, but this CLIP is SDXL" in error.exception_message
    assert "encode the face with an SDXL F2D mapper" in error.exception_message


def test_sdxl_face_on_sd1_clip_is_a_node_error(sdxl_server, photos):
    graph = _faces_graph(photos)
    graph["6"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}
    graph["10"] = _apply("a", PROMPT, clip=["6", 1])
    error = _failure(sdxl_server, graph, ["10", 0])
    assert "This F2D face is for SDXL (made with an SDXL F2D mapper), but this CLIP is SD1.x" in error.exception_message


@pytest.fixture(scope="module")
def refiner_and_flavours(tiny_sdxl: TinySDXL, comfyui_path, tmp_path_factory) -> dict:
    """sdxl_refiner_towers.py's report: the refiner, fine-tuned towers and the SDXL flavours, in one process."""
    return run_library_script(
        SCRIPTS / "sdxl_refiner_towers.py",
        comfyui_path,
        checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
        refiner_unet_config=tiny_refiner_unet_config(),
        embeddings_dir=str(tmp_path_factory.mktemp("sdxl_embeddings")),
    )


def test_refiner_takes_the_g_half_and_fine_tuned_towers_take_s_star(refiner_and_flavours: dict):
    result = refiner_and_flavours
    assert (result["refiner_model"], result["refiner_clip"]) == ("SDXLRefiner", "SDXLRefinerClipModel")
    assert result["refiner_cond_shape"] == [1, 77, 1280] and result["refiner_equals_g_half"]
    assert result["refiner_pooled_equals_sdxl"] and result["refiner_l_untouched"]
    assert result["refiner_g_has_s_star"] == [True, True]
    assert "which is for SD1.x, but this CLIP is the SDXL refiner" in result["sd1_face_on_refiner"]
    assert result["tuned_equals_its_embedding"] and result["tuned_differs_from_base"]
    assert result["fine_tune_warning_base"] is None
    assert "text encoders differ from the ones the mapper was trained with" in result["fine_tune_warning_tuned"]
    assert result["clip_skip_default"] is None
    assert "SDXL's S* is made for the penultimate layer (-2" in result["clip_skip_last"]


def test_flavours_infer_but_do_not_train(refiner_and_flavours: dict):
    """T6: v-prediction, EDM v-prediction and Playground EDM SDXL checkpoints and a 9-channel (inpainting) SDXL take
    S* in their CLIP as the base does, but training refuses them with the eps-only and the inpainting messages; the
    refiner is refused with "train with the SDXL base"."""
    flavours = refiner_and_flavours["flavours"]
    kinds = {"v_pred": "V_PREDICTION", "edm_vpred": "V_PREDICTION_EDM", "playground_edm": "EDM"}
    for name, model_type in kinds.items():
        assert flavours[name]["model_type"] == model_type and flavours[name]["applies"], (name, flavours[name])
        assert "Mapper training needs an eps-prediction SDXL model" in flavours[name]["refusal"], name
        assert "this MODEL predicts v" in flavours[name]["refusal"], name
    inpainting = flavours["inpainting"]
    assert inpainting["in_channels"] == 9 and inpainting["applies"]
    assert (
        "needs a text-to-image SDXL UNet (4 latent input channels); this MODEL's UNet takes 9"
        in (inpainting["refusal"])
    )
    assert (
        "This MODEL is the SDXL refiner: train the SDXL mapper with the SDXL base checkpoint" in (flavours["refiner"])
    )
