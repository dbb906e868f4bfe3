"""SDXL mapper training on the tiny SDXL (tests/support/tiny_sdxl.py): backend vs ComfyUI, the node, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from f2d_core.checkpoints import load_mapper
from f2d_core.identity.mapper_xl import F2DMapperXL
from f2d_core.training.data.cache import module_fingerprint
from tests.integration.test_cli import TRAIN_MAPPER, _metadata, _output, _rank_hashes, run_cli, write_face_photos
from tests.integration.test_sdxl import sdxl_loader
from tests.support import synthetic_insightface as si
from tests.support.comfy_library_run import run_library_script
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.conditioning_files import read_conditioning
from tests.support.f2d_graphs import CHECKPOINT, PACK, Graph, loader, save_conditioning, training_graph
from tests.support.photos import ASTRONAUT, load_rgb
from tests.support.tiny_sdxl import TinySDXL

SCRIPTS = Path(__file__).resolve().parent / "library_scripts"
NO_EXPRESSION = "(none: null_exp only)"


def face_photo() -> Image.Image:
    return Image.fromarray(si.face_photo(load_rgb(ASTRONAUT)))


def test_sdxl_backend_matches_comfyui_text_y_and_micro_batches(comfyui_path, tiny_sdxl: TinySDXL, tmp_path):
    """T3, T4 and U9 on the real backend (docs/sdxl.md section 5)."""
    result = run_library_script(
        SCRIPTS / "train_sdxl_backend.py",
        comfyui_path,
        checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
        work_dir=str(tmp_path),
    )
    assert result["backend"] == "ComfySDXLBackend" and result["positions"] == [4, 5]
    t3 = result["t3"]
    assert t3["cond_shape"] == [2, 77, 2048]
    # the out-of-place re-implementation: penultimate layer, no final LN, pooled at the first end token
    assert t3["cond_max_diff"] < 1e-5 and t3["pooled_max_diff"] < 1e-5, t3
    assert t3["plain_cond_max_diff"] < 1e-5 and t3["plain_pooled_max_diff"] < 1e-5, t3
    assert t3["s_star_moves_pooled"] > 1e-3  # bigG's end token attends to S*
    assert result["t4"] == {"y_shape": [3, 2816], "max_diff": 0.0}
    micro = result["micro_batch"]
    assert abs(micro["loss_micro"] - micro["loss_full"]) <= 1e-6 * abs(micro["loss_full"]), micro
    assert micro["grad_scale"] > 0 and micro["grad_rel_diff"] < 1e-5, micro


# ---- the training graph, the CLI and torchrun on the tiny SDXL --------------------------------------------

FOLDER = "f2d_sdxl_train_faces"
STEPS, LR = 3, 1e-3
TRAIN_TIMEOUT = 900


def sdxl_training_graph(run_name: str, steps: int = STEPS, save_as: str | None = None, **train: Any) -> Graph:
    """Probe loader (tiny SDXL) + Load MSID Encoder -> F2D Training Dataset -> Train F2D Mapper ("4") [-> Save]."""
    train = {"start_from": "scratch", "gradient_checkpointing": False, "micro_batch": 1, "vae": ["1", 2], **train}
    return training_graph(
        FOLDER,
        run_name,
        steps=steps,
        learning_rate=LR,
        save_as=save_as,
        checkpoint=sdxl_loader(),
        expression_model=NO_EXPRESSION,
        **train,
    )


# F2D Training Options in the node's run (and the same CLI flags in H1): gradient checkpointing at its finest
# granularity, which must not change the result. anchor_reg stays 0 there: at these runs' learning rate (100x the
# paper's) any lambda > 0 sends the 3-step trajectory elsewhere (AdamW moves a parameter by about one learning rate
# whatever the size of its gradient), and the eval loss, which counts the anchor term, then rose: 1.2426 -> 1.4348
# with 1e-3, -> 4.4691 with 0.5 (1.1657 without). S5 sends an anchor_reg through the node to the trainer.
GRANULARITY = "transformer_block"
CLI_OPTIONS = ["--gradient-checkpointing", "--checkpoint-granularity", GRANULARITY]


def sdxl_training_graph_with_options(run_name: str, anchor_reg: float = 0.0, **train: Any) -> Graph:
    """sdxl_training_graph with F2D Training Options ("8") connected: anchor_reg, checkpointing at GRANULARITY."""
    graph = sdxl_training_graph(run_name, gradient_checkpointing=True, options=["8", 0], **train)
    graph["8"] = {
        "class_type": "F2DTrainingOptions",
        "inputs": {"anchor_reg": anchor_reg, "checkpoint_granularity": GRANULARITY},
    }
    return graph


@pytest.fixture(scope="module")
def sdxl_faces(comfy_server: ComfyServer) -> Path:
    folder = Path(comfy_server.input_dir) / FOLDER
    write_face_photos(folder, count=2)
    return folder


def _cli_argv(
    tiny_sdxl: TinySDXL,
    comfyui_path,
    models_dir: Path,
    folder: Path,
    run_dir: Path,
    out: Path,
    batch: int = 2,
    micro_batch: int = 1,
) -> list:
    models = models_dir / "face2diffusion"
    argv = ["--comfyui", comfyui_path, "--checkpoint", tiny_sdxl.checkpoint, "--te-model-options", tiny_sdxl.te_options]
    argv += ["--msid", models / "msid.pt", "--from-scratch", "--insightface-root", models_dir / "insightface"]
    argv += ["--pack", PACK, "--folder", folder, "--crop-size", "64", "--face-parser", models / "79999_iter.pth"]
    argv += ["--batch-size", batch, "--micro-batch", micro_batch, "--lr", LR]
    argv += ["--run-dir", run_dir, "--out", out, "--cpu"]
    return argv


def _trained(comfy_models_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = comfy_models_dir / "face2diffusion" / f"{name}.safetensors"
    return load_mapper(path).state_dict(), _metadata(path)


def test_sdxl_training_graph_lowers_the_loss_resumes_exactly_and_encode_face_loads_it(
    comfy_server, comfy_models_dir, tiny_sdxl: TinySDXL, sdxl_faces
):
    """S6 and resume: the node trains 3 steps from scratch, with F2D Training Options (the fixed-batch loss falls;
    both heads and null_exp move); a run stopped at step 2 and queued again to 3 gives the same mapper; Encode
    Face loads the saved SDXL mapper and Apply F2D Tokens conditions the SDXL CLIP with it."""
    graph = sdxl_training_graph_with_options("sdxl_node", save_as="f2d_sdxl_trained")
    comfy_server.run(graph, timeout=TRAIN_TIMEOUT)
    trained, meta = _trained(comfy_models_dir, "f2d_sdxl_trained")
    settings = json.loads(meta["training_settings"])
    assert (meta["family"], meta["pooled_source"], meta["trained_steps"]) == ("sdxl", "class_prompt", "3")
    assert settings["family"] == "sdxl" and settings["micro_batch"] == 1
    assert (settings["gradient_checkpointing"], settings["checkpoint_granularity"]) == (True, GRANULARITY)
    assert settings["run_identity"]["family"] == "sdxl"
    assert len(meta["text_encoder_fingerprint"]) == 64  # the towers it was trained with
    assert settings["eval_loss_end"] < settings["eval_loss_start"], settings
    with torch.random.fork_rng(devices=[]):  # what "scratch" starts from (before its anchors)
        torch.manual_seed(0)
        start = F2DMapperXL().state_dict()
    for key in ("heads.l.i2t_first.fc_out.bias", "heads.g.i2t_last.layers.0.0.weight", "null_exp"):
        assert not torch.equal(trained[key], start[key]), key

    comfy_server.run(sdxl_training_graph_with_options("sdxl_resume", steps=2), timeout=TRAIN_TIMEOUT)
    resume = sdxl_training_graph_with_options("sdxl_resume", save_as="f2d_sdxl_resumed")
    comfy_server.run(resume, timeout=TRAIN_TIMEOUT)
    resumed, meta = _trained(comfy_models_dir, "f2d_sdxl_resumed")
    assert meta["trained_steps"] == "3"
    for key, value in trained.items():
        assert torch.equal(resumed[key], value), f"{key}: the resumed run differs from the uninterrupted one"

    graph = {
        "1": sdxl_loader(),
        "2": loader(mapper="f2d_sdxl_trained.safetensors"),
        "3": {
            "class_type": "LoadImage",
            "inputs": {"image": comfy_server.upload_image(face_photo(), "f2d_sdxl_t.png")},
        },
        "4": {
            "class_type": "F2DEncodeFace",
            "inputs": {
                "f2d_model": ["2", 0],
                "image": ["3", 0],
                "face_index": 0,
                "if_no_face": "error",
                "pooling": "normalized_mean",
            },
        },
        "5": {
            "class_type": "F2DApplyTokens",
            "inputs": {"clip": ["1", 1], "text": "a photo of f l", "f2d_face": ["4", 0]},
        },
    }
    comfy_server.run(save_conditioning(graph, ["5", 0], "sdxl_trained_cond", "9"), timeout=TRAIN_TIMEOUT)
    (entry,) = read_conditioning(Path(comfy_server.output_dir) / "sdxl_trained_cond.safetensors")
    assert list(entry.cond.shape) == [1, 77, 2048] and list(entry.pooled.shape) == [1, 1280]


def test_sdxl_training_refuses_a_mismatched_mapper_and_training_set(comfy_server, tiny_sdxl: TinySDXL, sdxl_faces):
    """S5: an SD1.x starting mapper for the SDXL MODEL, and an SDXL training set for the SD1.5 MODEL + its VAE; an
    anchor_reg from F2D Training Options for an SD1.x run (no anchors)."""
    sd1_start = sdxl_training_graph("sdxl_wrong_start", steps=1, start_from="f2d_model mapper")
    with pytest.raises(ExecutionFailed) as failure:
        comfy_server.run(sd1_start, timeout=TRAIN_TIMEOUT)
    message = failure.value.exception_message
    assert "The starting mapper is for SD1.x but the MODEL to train is SDXL" in message
    assert "CLIP-L head of the f2d_model mapper (SDXL)" in message
    wrong_set = sdxl_training_graph("sdxl_wrong_set", steps=1)
    wrong_set["7"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}
    wrong_set["4"]["inputs"] |= {"model": ["7", 0], "clip": ["7", 1], "vae": ["7", 2]}
    with pytest.raises(ExecutionFailed) as failure:
        comfy_server.run(wrong_set, timeout=TRAIN_TIMEOUT)
    assert "This training set was made with another VAE" in failure.value.exception_message
    sd1_anchor_reg = sdxl_training_graph_with_options("sd1_anchor_reg", anchor_reg=0.1, steps=1)
    sd1_anchor_reg["7"] = wrong_set["7"]
    sd1_anchor_reg["4"]["inputs"] |= {"model": ["7", 0], "clip": ["7", 1]}
    del sd1_anchor_reg["4"]["inputs"]["vae"]
    with pytest.raises(ExecutionFailed) as failure:  # F2D Training Options reaches the trainer
        comfy_server.run(sd1_anchor_reg, timeout=TRAIN_TIMEOUT)
    assert "anchor_reg pulls S* towards the anchors an SDXL mapper starts at" in failure.value.exception_message
    assert comfy_server.object_info("F2DTrainMapper")  # the server keeps serving


def test_sdxl_cli_trains_the_nodes_mapper(comfyui_path, comfy_models_dir, tiny_sdxl: TinySDXL, sdxl_faces, tmp_path):
    """H1: cli/train_mapper.py (one process) on the same folder, seed and steps as the node gives its mapper.

    Not bit for bit: the server and the CLI sum in other orders (thread pools), and AdamW turns a rounding-level
    difference of a near-zero gradient into up to one learning-rate step. So: the same eval losses to 1e-5,
    the same update direction, and all but a few coordinates within 1e-6."""
    run_dir, out = tmp_path / "run", tmp_path / "cli_sdxl.safetensors"
    argv = [
        sys.executable,
        TRAIN_MAPPER,
        *_cli_argv(tiny_sdxl, comfyui_path, comfy_models_dir, sdxl_faces, run_dir, out),
        *CLI_OPTIONS,
    ]
    done = run_cli([*argv, "--steps", str(STEPS)], timeout=TRAIN_TIMEOUT)
    assert done.returncode == 0, _output(done)
    node_path = comfy_models_dir / "face2diffusion" / "f2d_sdxl_trained.safetensors"
    if not node_path.is_file():
        pytest.skip("needs the node's mapper (test_sdxl_training_graph_lowers_the_loss... runs first)")
    node, cli = load_mapper(node_path), load_mapper(out)
    assert cli.family == "sdxl" and _metadata(out)["family"] == "sdxl"
    ours, theirs = (
        json.loads(_metadata(out)["training_settings"]),
        json.loads(_metadata(node_path)["training_settings"]),
    )
    for key in ("eval_loss_start", "eval_loss_end"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
    for key in ("gradient_checkpointing", "checkpoint_granularity"):
        assert ours[key] == theirs[key], key
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start = torch.cat([v.flatten() for v in F2DMapperXL().state_dict().values()])
    a = torch.cat([v.flatten() for v in node.state_dict().values()])
    b = torch.cat([v.flatten() for v in cli.state_dict().values()])
    assert torch.nn.functional.cosine_similarity(a - start, b - start, dim=0) > 0.999
    assert ((a - b).abs() > 1e-6).float().mean() < 0.01


def _torchrun(tiny_sdxl: TinySDXL, comfyui_path, models_dir: Path, folder: Path, work: Path, micro_batch: int):
    """2 gloo ranks, global batch 4 (2 per rank), 2 steps, anchor_reg 0.5: (the saved mapper's path, the run)."""
    out = work / f"ddp_sdxl_micro{micro_batch}.safetensors"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN_MAPPER]
    argv += _cli_argv(tiny_sdxl, comfyui_path, models_dir, folder, work / f"run{micro_batch}", out, 4, micro_batch)
    done = run_cli([*argv, "--steps", "2", "--anchor-reg", "0.5"], timeout=TRAIN_TIMEOUT)
    assert done.returncode == 0, _output(done)
    return out, done


def test_sdxl_train_mapper_on_two_cpu_ranks_micro_batched_as_one_batch(
    comfyui_path, comfy_models_dir, tiny_sdxl: TinySDXL, sdxl_faces, tmp_path
):
    """H2 and H3: torchrun, 2 gloo ranks, global batch 4: the ranks agree, the file holds rank 0's SDXL mapper and
    records anchor_reg; 2 ranks x micro-batch 1 (per-rank batch 2) train as 2 ranks x one batch of 2 at step 2.

    As in H1 (node vs CLI), the UNet sums a batch of 1 and of 2 in other orders and AdamW turns a rounding-level
    difference of a near-zero gradient into up to one learning-rate step: so the fixed-batch loss before training
    within 1e-6 and after step 2 within 1e-5 (measured: 1.5e-6), the same update direction and all but a few
    coordinates within 1e-6."""
    paths = {}
    for micro in (1, 0):
        out, done = _torchrun(tiny_sdxl, comfyui_path, comfy_models_dir, sdxl_faces, tmp_path, micro)
        hashes = _rank_hashes(done.stderr)
        assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"] and hashes["0"][1] == "2", _output(done)
        assert module_fingerprint(load_mapper(out)) == hashes["0"][0]
        settings = json.loads(_metadata(out)["training_settings"])
        assert (settings["global_batch_size"], settings["batch_size"], settings["world_size"]) == (4, 2, 2)
        assert settings["family"] == "sdxl" and settings["micro_batch"] == micro and settings["anchor_reg"] == 0.5
        assert (settings["gradient_checkpointing"], settings["checkpoint_granularity"]) == (False, None)  # unused
        paths[micro] = (out, settings)
    (micro_path, micro), (full_path, full) = paths[1], paths[0]
    assert micro["eval_loss_start"] == pytest.approx(full["eval_loss_start"], rel=1e-6)  # before any update
    assert micro["eval_loss_end"] == pytest.approx(full["eval_loss_end"], rel=1e-5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start = torch.cat([v.flatten() for v in F2DMapperXL().state_dict().values()])
    a = torch.cat([v.flatten() for v in load_mapper(micro_path).state_dict().values()])
    b = torch.cat([v.flatten() for v in load_mapper(full_path).state_dict().values()])
    assert torch.nn.functional.cosine_similarity(a - start, b - start, dim=0) > 0.999
    assert ((a - b).abs() > 1e-6).float().mean() < 0.01


def test_checkpointing_granularities_give_the_uncheckpointed_gradients(comfyui_path, tiny_models, tiny_sdxl: TinySDXL):
    """docs/sdxl.md 3.5: "block" checkpoints each ResBlock and SpatialTransformer, "transformer_block" each ResBlock
    and BasicTransformerBlock (not the SpatialTransformers around them); S*'s gradient is the un-checkpointed one
    at both, on the tiny SD1.5 and the tiny SDXL; make_backend passes the granularity on."""
    result = run_library_script(
        SCRIPTS / "train_checkpointing.py",
        comfyui_path,
        sd1_checkpoint=str(tiny_models.checkpoint),
        sdxl_checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
    )
    assert result["sdxl"]["modules"]["BasicTransformerBlock"] == 24  # input side 2 x 2 + 2 x 10
    for family in ("sd1", "sdxl"):
        found = result[family]
        modules, blocks, transformer_blocks = found["modules"], found["block"], found["transformer_block"]
        assert found["grad_norm"] > 0 and found["plain_unet_swapped"] == {}, family
        assert blocks["swapped"] == {k: modules[k] for k in ("ResBlock", "SpatialTransformer")}, family
        assert transformer_blocks["swapped"] == {k: modules[k] for k in ("ResBlock", "BasicTransformerBlock")}, family
        for granularity in (blocks, transformer_blocks):
            assert granularity["count"] == sum(granularity["swapped"].values())
            assert granularity["max_rel_diff"] <= 1e-6, (family, granularity)
    assert result["sd1_through_make_backend"] == result["sd1"]["transformer_block"]["swapped"]
