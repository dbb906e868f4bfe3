"""SDXL in a real ComfyUI server, on the tiny SDXL (tests/support/tiny_sdxl.py): detection, S* in both towers equal to
a textual-inversion file, the pooled vector's source, regional people, every family mismatch named, clip skip,
the refiner and fine-tuned towers, and norm matching to the mapper's anchors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from f2d_core.checkpoints import save_f2d_safetensors
from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import load_face
from f2d_core.identity.norm_match import mapper_anchors
from tests.support import synthetic_insightface as si
from tests.support.comfy_library_run import run_library_script
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.conditioning_files import node_failure, saved_conditionings
from tests.support.f2d_graphs import checkpoint_loader, encode_faces, loader, save_conditioning
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb
from tests.support.sdxl_mappers import ANCHORED_SDXL_MAPPER, anchored_sdxl_mapper
from tests.support.tiny_sdxl import TinySDXL, tiny_refiner_unet_config

SCRIPTS = Path(__file__).parent / "library_scripts"
SDXL_CKPT = "f2d_tiny_sdxl.safetensors"
SDXL_MAPPER = "f2d_test_sdxl_mapper.safetensors"
OTHER_TOWERS_MAPPER = "f2d_test_sdxl_mapper_other_towers.safetensors"
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
    graph = encode_faces({"1": sdxl_loader(), "2": loader(mapper=mapper)}, photos, ["2", 0])
    for key in ("a", "b"):
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


def _failure(server: ComfyServer, graph: dict, source: list) -> ExecutionFailed:
    return node_failure(server, graph, source, "F2DApplyTokens")


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
    saved = saved_conditionings(sdxl_server, graph, {name: [name[3:], 0] for name in names})
    (ours, ti), (w_ours, w_ti), (l_ours, l_ti) = [
        (saved[f"sx_{a}"][0], saved[f"sx_{b}"][0]) for a, b in ((10, 11), (12, 13), (14, 15))
    ]
    for a, b in ((ours, ti), (w_ours, w_ti), (l_ours, l_ti)):
        assert a.cond.shape == b.cond.shape and torch.equal(a.cond, b.cond)
        assert torch.equal(a.pooled, b.pooled)
    assert list(ours.cond.shape) == [1, 77, 2048] and list(l_ours.cond.shape) == [1, 154, 2048]
    assert list(ours.pooled.shape) == [1, 1280]
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
    saved = saved_conditionings(
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
    graph["6"] = checkpoint_loader()
    graph["10"] = _apply("a", PROMPT, clip=["6", 1])
    error = _failure(sdxl_server, graph, ["10", 0])
    assert "This F2D face is for SDXL (made with an SDXL F2D mapper), but this CLIP is SD1.x" in error.exception_message


def _freecure_failure(server: ComfyServer, graph: dict, model: list, clip: list, vae: list) -> str:
    """F2D FreeCure Sampler on face a with these MODEL/CLIP/VAE, saved by SaveLatent: its error message."""
    graph["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}}
    graph["7"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}}
    graph["10"] = {
        "class_type": "F2DFreeCureSampler",
        "inputs": {
            "model": model, "clip": clip, "vae": vae, "f2d_face": ["4a", 0], "text": "a photo of f l with red hair",
            "negative": ["7", 0], "latent_image": ["6", 0], "face_parser": "79999_iter.pth", "seed": 3, "steps": 1,
            "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "attributes": "auto", "mask_weight": 2.0,
        },
    }  # fmt: skip
    graph["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "never_written"}}
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph, timeout=300)
    assert info.value.node_type == "F2DFreeCureSampler"
    assert server.object_info("F2DFreeCureSampler")  # the server keeps serving
    return info.value.exception_message


def test_freecure_refuses_an_sdxl_face_and_an_sdxl_model_by_name(sdxl_server, photos):
    """FreeCure here is SD1.x F2D. A real SDXL has up-block transformers (the tiny one has none), so the refusal
    cannot rest on the layer search: an SDXL face, and an SD1 face with an SDXL MODEL, are refused first."""
    sdxl_face = _freecure_failure(sdxl_server, _faces_graph(photos), ["1", 0], ["1", 1], ["1", 2])
    assert "F2D FreeCure runs SD1.x Face2Diffusion, and this face comes from an SDXL mapper" in sdxl_face
    graph = _faces_graph(photos, mapper="mapping.pt") | {"8": checkpoint_loader()}
    sdxl_model = _freecure_failure(sdxl_server, graph, ["1", 0], ["8", 1], ["8", 2])
    assert "F2D FreeCure runs on SD1.x checkpoints, and this MODEL is SDXL (cross-attention width 2048" in sdxl_model
    assert "For SDXL, use Apply F2D Tokens with a KSampler" in sdxl_model


@pytest.fixture(scope="module")
def towers(tiny_sdxl: TinySDXL, comfyui_path, tmp_path_factory) -> dict:
    """library_scripts/sdxl_refiner_towers.py's report: refiner, fine-tuned towers, clip skip, refusals, flavours."""
    return run_library_script(
        SCRIPTS / "sdxl_refiner_towers.py",
        comfyui_path,
        checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
        refiner_unet_config=tiny_refiner_unet_config(),
        embeddings_dir=str(tmp_path_factory.mktemp("sdxl_embeddings")),
    )


def test_refiner_takes_the_g_half_and_fine_tuned_towers_take_s_star(towers: dict):
    result = towers
    assert (result["refiner_model"], result["refiner_clip"]) == ("SDXLRefiner", "SDXLRefinerClipModel")
    assert result["refiner_cond_shape"] == [1, 77, 1280] and result["refiner_equals_g_half"]
    assert result["refiner_pooled_equals_sdxl"] and result["refiner_l_untouched"]
    assert result["refiner_g_has_s_star"] == [True, True]
    assert "which is for SD1.x, but this CLIP is the SDXL refiner" in result["sd1_face_on_refiner"]
    assert result["tuned_equals_its_embedding"] and result["tuned_differs_from_base"]
    assert result["fine_tune_warning_base"] is None
    assert "text encoders differ from the ones the mapper was trained with" in result["fine_tune_warning_tuned"]


def test_clip_skip_on_sdxl_warns_only_off_the_trained_layer(towers: dict):
    """SDXL's towers are read at the penultimate layer: no CLIP Set Last Layer (None) or -2 is that layer; -1 and
    -3 warn, naming -2."""
    skip = towers["clip_skip"]
    assert skip["None"] is None and skip["-2"] is None
    for layer in ("-1", "-3"):
        assert skip[layer].startswith(f"clip skip: this CLIP stops at layer {layer} (CLIP Set Last Layer)")
        assert "SDXL's S* is made for the penultimate layer (-2, SDXL's default)" in skip[layer]
        assert "Set stop_at_clip_layer to -2" in skip[layer]


def test_family_mismatch_errors_name_both_families(towers: dict):
    """On real CLIP objects, before ComfyUI sees a tensor: each mismatch is a PromptError naming the face's family
    and the CLIP's; a wrong-width S* names the tower and both widths."""
    refused = towers["refusals"]
    sd1_needed = "Apply F2D Tokens needs an SD1.x checkpoint's CLIP (CLIP-L, 768-wide words) for this F2D face, which "
    assert refused["sd1_face_on_sdxl"].startswith("PromptError: " + sd1_needed)
    assert "which is for SD1.x, but this CLIP is SDXL" in refused["sd1_face_on_sdxl"]
    assert "encode the face with an SDXL F2D mapper" in refused["sd1_face_on_sdxl"]
    assert "which is for SD1.x, but this CLIP is Flux" in refused["sd1_face_on_flux"]
    sdxl_face = "PromptError: This F2D face is for SDXL (made with an SDXL F2D mapper), but this CLIP is "
    assert refused["sdxl_face_on_sd1"].startswith(sdxl_face + "SD1.x: connect an SDXL checkpoint's CLIP")
    assert refused["sdxl_face_on_flux"].startswith(sdxl_face + "Flux: ")
    assert refused["narrow_g_on_sdxl"] == (
        "F2DError: S* has the wrong width for the SDXL text tower 'g': expected [2, 1280], found [2, 1024]. Encode "
        "the face again with a mapper of this family."
    )
    assert refused["wide_sd1_face_on_sd1"].startswith(
        "F2DError: S* has the wrong width for the SD1.x text tower 'l': expected [2, 768], found [2, 1024]."
    )
    assert refused["sd1_face_on_sd1"] == refused["sdxl_face_on_sdxl"] == "accepted"


@pytest.fixture(scope="module")
def anchors(sdxl_server: ComfyServer, comfy_models_root: Path) -> dict[str, torch.Tensor]:
    """The anchored seeded SDXL mapper (as Train F2D Mapper starts one) in face2diffusion/; its anchors."""
    mapper = anchored_sdxl_mapper()
    save_f2d_safetensors(comfy_models_root / "face2diffusion" / ANCHORED_SDXL_MAPPER, mapper=mapper)
    return mapper_anchors(mapper)


def _norm_match(face: list, mode: str = "anchor") -> dict:
    return {"class_type": "F2DNormMatch", "inputs": {"f2d_face": face, "norm_match": mode}}


def _last_saved_face(models_root: Path, stem: str) -> EncodedFace:
    return load_face(max((models_root / "face2diffusion" / "faces").glob(f"{stem}_*.safetensors")))


def test_norm_match_gives_the_words_the_anchor_norms(sdxl_server, photos, anchors, comfy_models_root):
    """F2D Norm Match (anchor): each word of the saved face has its anchor's norm and the plain face's direction,
    and the face's settings say so; off leaves S* bit-identical; Apply F2D Tokens carries the rescaled words."""
    graph = _faces_graph(photos, mapper=ANCHORED_SDXL_MAPPER)
    graph |= {"n": _norm_match(["4a", 0]), "o": _norm_match(["4a", 0], "off")}
    for node, face, name in (("s1", "4a", "nm_plain"), ("s2", "n", "nm_matched"), ("s3", "o", "nm_off")):
        graph[node] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": [face, 0], "name": name}}
    graph |= {"10": _apply("a", PROMPT), "11": _apply("a", PROMPT)}
    graph["11"]["inputs"]["f2d_face"] = ["n", 0]
    saved = saved_conditionings(sdxl_server, graph, {"nm_apply_plain": ["10", 0], "nm_apply_matched": ["11", 0]})
    plain, matched, off = (_last_saved_face(comfy_models_root, n) for n in ("nm_plain", "nm_matched", "nm_off"))
    for tower, anchor in anchors.items():
        words, before = matched.s_star[tower], plain.s_star[tower]
        torch.testing.assert_close(words.norm(dim=-1), anchor.norm(dim=-1), rtol=1e-6, atol=0)
        torch.testing.assert_close(
            words / words.norm(dim=-1, keepdim=True), before / before.norm(dim=-1, keepdim=True), rtol=0, atol=1e-6
        )
        assert not torch.allclose(before.norm(dim=-1), anchor.norm(dim=-1), rtol=1e-2)
        assert torch.equal(off.s_star[tower], before)
    assert matched.settings["norm_match"] == "anchor" and "norm_match" not in plain.settings | off.settings
    ours, theirs = saved["nm_apply_matched"][0].cond, saved["nm_apply_plain"][0].cond
    assert torch.equal(ours[0, :4], theirs[0, :4])
    assert (ours[0, 4, :768] != theirs[0, 4, :768]).any() and (ours[0, 4, 768:] != theirs[0, 4, 768:]).any()


@pytest.mark.parametrize(
    ("mapper", "says"),
    [
        (SDXL_MAPPER, "cannot be norm-matched: it holds no anchors"),
        ("mapping.pt", "Norm matching is for SDXL faces, but this face is for SD1.x"),
    ],
)
def test_norm_match_without_anchors_is_a_node_error(sdxl_server, photos, mapper: str, says: str):
    """An SDXL mapper saved without anchors, or an SD1.x face: a node error saying what to do."""
    graph = _faces_graph(photos, mapper=mapper)
    graph |= {"n": _norm_match(["4a", 0]), "10": _apply("a", PROMPT)}
    graph["10"]["inputs"]["f2d_face"] = ["n", 0]
    error = _failure(sdxl_server, graph, ["10", 0])
    assert error.node_type == "F2DNormMatch" and says in error.exception_message
    assert ("set norm_match to off" if mapper == SDXL_MAPPER else "Remove F2D Norm Match") in error.exception_message


def test_fine_tuned_text_encoders_warn(sdxl_server, photos, comfy_models_root):
    """A mapper that recorded other text-encoder weights than this CLIP's (as one trained on SDXL base, used on a
    fine-tune that retrained its towers): Apply F2D Tokens works and says so under the node; a mapper that recorded
    none says nothing. (Matching towers give no warning: test_refiner_takes_the_g_half_and_fine_tuned_towers...)"""
    mapper = anchored_sdxl_mapper()
    mapper.text_encoder_fingerprint = "0" * 64  # no real towers hash to this
    save_f2d_safetensors(comfy_models_root / "face2diffusion" / OTHER_TOWERS_MAPPER, mapper=mapper)
    texts = {}
    for name in (OTHER_TOWERS_MAPPER, SDXL_MAPPER):
        graph = _faces_graph(photos, mapper=name)
        graph["10"] = _apply("a", PROMPT)
        history = sdxl_server.run(save_conditioning(graph, ["10", 0], "ft_warning", "99"), timeout=300)
        (texts[name],) = history["outputs"]["10"]["text"]
    assert texts[OTHER_TOWERS_MAPPER].startswith(
        "Warning: this checkpoint's text encoders differ from the ones the mapper was trained with"
    )
    assert "train or fine-tune the mapper on this checkpoint" in texts[OTHER_TOWERS_MAPPER]
    assert texts[SDXL_MAPPER] == ""


def test_flavours_infer_but_do_not_train(towers: dict):
    """T6: v-prediction, EDM v-prediction and Playground EDM SDXL checkpoints and a 9-channel (inpainting) SDXL take
    S* in their CLIP as the base does, but training refuses them with the eps-only and the inpainting messages; the
    refiner is refused with "train with the SDXL base"."""
    flavours = towers["flavours"]
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
