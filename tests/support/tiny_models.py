"""Tiny SD1.5 models (checkpoint, inpainting checkpoint, ControlNet) that a real ComfyUI detects as SD15.

The models are built at test time with ComfyUI's own module classes (so every key is one ComfyUI
loads), in a subprocess: ComfyUI's top-level `nodes`, `utils` and `tests` would otherwise collide
with this repository's packages in the test process. Weights are seeded per key, so a build is
reproducible. The text encoder is the full SD1.x CLIP-L on the fixture's formula weights
(`formula_weights.clip_text_state_dict`, fp32 in the plain checkpoint), so ComfyUI's conditioning
can be held to the fixture's `clip_hidden`. The same subprocess then loads the files as ComfyUI's
loaders do and records what it detected (`TinyModels.verification`).

    models = build_tiny_models(models_dir, comfyui_path)   # reuses a build whose stamp matches

For benchmarks (ComfyUI importable, e.g. after `import_comfy`): `full_sd15_unet_config()` with
`random_unet_state_dict` or `sd15_checkpoint_state_dict`, then `save_safetensors`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.support import formula_weights

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

CHECKPOINT = "checkpoints/f2d_tiny_sd15.safetensors"
INPAINT_CHECKPOINT = "checkpoints/f2d_tiny_sd15_inpaint.safetensors"
CONTROLNET = "controlnet/f2d_tiny_controlnet_sd15.safetensors"

# Bump when what the builder writes changes: a stamp with another version is rebuilt.
SPEC_VERSION = 1
STAMP_NAME = ".f2d_tiny_models.json"
BUILD_TIMEOUT_S = 900

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
CONTROLNET_PREFIX = "control_model."

# TAESD on SD1.x latents: what ComfyUI's VAELoader sets for `taesd` (latents * 0.18215 go in).
TAESD_SD1_SCALE = 0.18215

# What ComfyUI's model_detection finds for an SD1.5 UNet, minus the depth of the block tables.
_SD15_UNET_COMMON: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "model_channels": 320,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def tiny_sd15_unet_config(in_channels: int = 4) -> dict[str, Any]:
    """A 25.8 M-parameter UNet that ComfyUI detects as SD15: one level, one res block, depth 1."""
    return {
        **_SD15_UNET_COMMON,
        "in_channels": in_channels,
        "num_res_blocks": [1],
        "channel_mult": [1],
        "transformer_depth": [1],
        "transformer_depth_output": [1, 1],
        "transformer_depth_middle": 1,
    }


def full_sd15_unet_config(in_channels: int = 4) -> dict[str, Any]:
    """The real SD1.5 UNet (860 M parameters), as ComfyUI's model_detection describes it; for benchmarks."""
    return {
        **_SD15_UNET_COMMON,
        "in_channels": in_channels,
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
    }


# ---------------------------------------------------------------------------------------------
# Weights: seeded per key, so neither key order nor the set of other keys changes a tensor.


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float32 tensor for `key`, from a generator seeded by (seed, key); scale chosen from the key."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    v = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1  # uniform [-1, 1)
    if key.endswith(".bias"):
        return 0.02 * v
    if key.endswith(".weight") and len(shape) == 1:  # norm scales
        return 1 + 0.1 * v
    if key.endswith(".weight"):
        fan_in = math.prod(shape[1:])
        return v * math.sqrt(3.0 / fan_in)  # unit-variance activations
    return 0.02 * math.sqrt(3.0) * v


def seeded_state_dict(
    shapes: dict[str, tuple[int, ...]], prefix: str, seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`seeded_tensor` for every key of `shapes`, renamed with `prefix` and cast to `dtype`."""
    return {prefix + k: seeded_tensor(prefix + k, shape, seed).to(dtype) for k, shape in shapes.items()}


# ---------------------------------------------------------------------------------------------
# ComfyUI as a library (only inside the builder subprocess, or a benchmark that chose to).


def import_comfy(comfyui_path: Path) -> None:
    """Put a ComfyUI checkout first on sys.path and switch it to CPU before model_management loads."""
    path = str(Path(comfyui_path).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = True


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a module's state dict."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def unet_shapes(unet_config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ComfyUI's UNetModel for `unet_config` (built on the meta device)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    return _shapes(unet)


def controlnet_shapes(unet_config: dict[str, Any], hint_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ComfyUI's ControlNet matching a UNet of `unet_config`."""
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in unet_config.items() if k != "out_channels"}
    net = comfy.cldm.cldm.ControlNet(
        **config, hint_channels=hint_channels, device="meta", operations=comfy.ops.disable_weight_init
    )
    return _shapes(net)


def taesd_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of ComfyUI's TAESD (`taesd_encoder.*`, `taesd_decoder.*`, `vae_scale`, `vae_shift`)."""
    import comfy.taesd.taesd

    with torch.device("meta"):
        return _shapes(comfy.taesd.taesd.TAESD())


def random_unet_state_dict(
    unet_config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float16, prefix: str = UNET_PREFIX
) -> dict[str, torch.Tensor]:
    """Seeded random weights for a UNet of `unet_config` (e.g. `full_sd15_unet_config()`); needs `import_comfy`."""
    return seeded_state_dict(unet_shapes(unet_config), prefix, seed, dtype)


def taesd_state_dict(
    seed: int = 0, dtype: torch.dtype = torch.float16, scale: float = TAESD_SD1_SCALE
) -> dict[str, torch.Tensor]:
    """Seeded TAESD weights under `first_stage_model.`, with the latent `scale` ComfyUI's VAELoader sets for the
    family (SD1's 0.18215 by default; SDXL's 0.13025 for the tiny SDXL)."""
    sd = seeded_state_dict(taesd_shapes(), VAE_PREFIX, seed, dtype)
    sd[VAE_PREFIX + "vae_scale"] = torch.tensor(scale)  # fp32: neither scale is an fp16 number
    sd[VAE_PREFIX + "vae_shift"] = torch.tensor(0.0)
    return sd


def text_encoder_state_dict(
    dtype: torch.dtype, formula: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The formula CLIP-L text encoder under `cond_stage_model.transformer.` (SD1.x checkpoint layout)."""
    formula = formula if formula is not None else formula_weights.clip_text_state_dict()
    return {TEXT_ENCODER_PREFIX + k: v.to(dtype) for k, v in formula.items()}


def sd15_checkpoint_state_dict(
    unet_config: dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    text_encoder: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A whole SD1.x checkpoint: seeded UNet and TAESD, formula CLIP-L (fp32 unless given); needs `import_comfy`."""
    te = text_encoder if text_encoder is not None else text_encoder_state_dict(torch.float32)
    return {**random_unet_state_dict(unet_config, seed, dtype), **taesd_state_dict(seed, dtype), **te}


def controlnet_state_dict(
    unet_config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """Seeded ControlNet weights in the original `.pth` layout (`control_model.*`); needs `import_comfy`."""
    return seeded_state_dict(controlnet_shapes(unet_config), CONTROLNET_PREFIX, seed + 1, dtype)


def save_safetensors(sd: dict[str, torch.Tensor], path: Path, what: str) -> int:
    """Write a safetensors file atomically and return its size in bytes."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(partial), metadata={"f2d_tiny": what})
    partial.replace(path)
    return path.stat().st_size


def write_tiny_models(
    models_dir: Path,
    seed: int = 0,
    text_encoder_dtype: torch.dtype = torch.float32,
    formula: dict[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """Write the three tiny models under `models_dir` (needs `import_comfy`); return their sizes in bytes.

    UNet, TAESD and ControlNet are fp16. The plain checkpoint's text encoder is `text_encoder_dtype`
    (fp32 keeps the formula weights exact); the inpainting checkpoint's is fp16.
    """
    formula = formula if formula is not None else formula_weights.clip_text_state_dict()
    sizes = {}
    for rel, in_channels, te_dtype in ((CHECKPOINT, 4, text_encoder_dtype), (INPAINT_CHECKPOINT, 9, torch.float16)):
        te = text_encoder_state_dict(te_dtype, formula)
        sd = sd15_checkpoint_state_dict(tiny_sd15_unet_config(in_channels), seed, torch.float16, text_encoder=te)
        sizes[rel] = save_safetensors(sd, models_dir / rel, f"sd15 in_channels={in_channels} seed={seed}")
    cnet = controlnet_state_dict(tiny_sd15_unet_config(), seed, torch.float16)
    sizes[CONTROLNET] = save_safetensors(cnet, models_dir / CONTROLNET, f"sd15 controlnet seed={seed}")
    return sizes


# ---------------------------------------------------------------------------------------------
# Verification: what ComfyUI makes of the files (inside the subprocess).


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect the WARNING+ records ComfyUI logs meanwhile (it reports missing keys only there)."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def _text_encoder_report(clip: Any, formula: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Compare every text-model weight ComfyUI holds with the formula (a missing key = garbage weights)."""
    held = {
        k.split("transformer.", 1)[1]: v
        for k, v in clip.cond_stage_model.state_dict().items()
        if ".transformer.text_model." in k
    }
    differing = [k for k in formula if k in held and not torch.equal(held[k].to(formula[k].dtype), formula[k])]
    return {
        "weights_held": len(held),
        "held_not_in_formula": sorted(set(held) - set(formula)),
        "formula_not_held": sorted(set(formula) - set(held)),
        "differing_from_formula": differing,
        "dtypes": sorted({str(v.dtype) for v in held.values()}),
    }


def _conditioning_report(clip: Any) -> dict[str, Any]:
    """CLIPTextEncode of the fixture's plain prompts: shape, sanity, and agreement with its `clip_hidden`.

    The encoder is causal, so positions before the identifier "f l" do not see the official S*
    injection: there ComfyUI's plain conditioning must equal the fixture's `clip_hidden`.
    """
    import nodes  # ComfyUI's nodes.py: import_comfy put the checkout first on sys.path

    fixture = formula_weights.expected()
    conds, prefix_diffs, token_match = [], [], []
    for i, prompt in enumerate(fixture["clip_prompts"]):
        ids = [int(t) for t, _w in clip.tokenize(str(prompt))["l"][0]]
        token_match.append(ids == fixture["clip_token_ids"][i].tolist())
        ((cond, extra),) = nodes.CLIPTextEncode().encode(clip, str(prompt))[0]
        pos = int(fixture["clip_face_pos"][i])
        prefix_diffs.append(float(np.abs(cond[0, :pos].float().numpy() - fixture["clip_hidden"][i, :pos]).max()))
        conds.append((cond, extra.get("pooled_output")))
    tensor, pooled = conds[0]
    return {
        "prompts": [str(p) for p in fixture["clip_prompts"]],
        "shape": list(tensor.shape),
        "finite": all(bool(torch.isfinite(c).all()) for c, _ in conds),
        "std": float(tensor.float().std()),
        "pooled_shape": list(pooled.shape) if pooled is not None else None,
        "token_ids_match_fixture": token_match,
        "fixture_prefix_max_abs_diff": max(prefix_diffs),
    }


def _checkpoint_report(path: Path, formula: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Load a checkpoint as CheckpointLoaderSimple does (CLIP kept fp32 when `formula` is given) and describe it."""
    import comfy.sd

    te_options = {"dtype": torch.float32} if formula is not None else {}
    with _captured_warnings() as warnings:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=formula is not None, te_model_options=te_options
        )
    base = model.model
    report: dict[str, Any] = {
        "model_config": type(base.model_config).__name__,
        "model_type": base.model_type.name,
        "unet_parameters": sum(p.numel() for p in base.diffusion_model.parameters()),
        "in_channels": base.model_config.unet_config["in_channels"],
        "concat_keys": list(base.concat_keys),
        "vae": type(vae.first_stage_model).__name__,
        "vae_scale": vae.first_stage_model.vae_scale.item(),
    }
    if formula is not None:
        report["text_encoder"] = _text_encoder_report(clip, formula)
        report["conditioning"] = _conditioning_report(clip)
    report["warnings"] = list(warnings)
    return report


def _controlnet_report(path: Path) -> dict[str, Any]:
    """Load the ControlNet as ControlNetLoader does and describe it."""
    import comfy.controlnet

    with _captured_warnings() as warnings:
        control = comfy.controlnet.load_controlnet(str(path))
    return {
        "type": type(control).__name__ if control is not None else None,
        "model_channels": getattr(getattr(control, "control_model", None), "model_channels", None),
        "warnings": list(warnings),
    }


def detection_report(unet_config: dict[str, Any]) -> dict[str, Any]:
    """What ComfyUI's model detection makes of a UNet config's keys and shapes (meta tensors, no weights)."""
    import comfy.model_detection

    shapes = unet_shapes(unet_config)
    sd = {UNET_PREFIX + k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in shapes.items()}
    detected = comfy.model_detection.detect_unet_config(sd, UNET_PREFIX)
    model_config = comfy.model_detection.model_config_from_unet(sd, UNET_PREFIX)
    return {
        "model_config": type(model_config).__name__,
        "parameters": sum(math.prod(s) for s in shapes.values()),
        "config_differences": {k: [v, detected.get(k)] for k, v in unet_config.items() if detected.get(k, v) != v},
    }


def verification_report(models_dir: Path, formula: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """What ComfyUI detects in the tiny models: config class, VAE kind, text-encoder weights, conditioning."""
    formula = formula if formula is not None else formula_weights.clip_text_state_dict()
    return {
        "checkpoint": _checkpoint_report(models_dir / CHECKPOINT, formula),
        "inpaint_checkpoint": _checkpoint_report(models_dir / INPAINT_CHECKPOINT, None),
        "controlnet": _controlnet_report(models_dir / CONTROLNET),
        "full_sd15_unet": detection_report(full_sd15_unet_config()),
    }


def timed_build(write: Callable[[], dict[str, int]], verify: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`write()` the files (file -> bytes), then `verify()` them: the builder subprocess's report, with both times."""
    start = time.perf_counter()
    sizes = write()
    written = time.perf_counter()
    verification = verify()
    return {
        "sizes": sizes,
        "write_seconds": written - start,
        "verify_seconds": time.perf_counter() - written,
        "verification": verification,
    }


def build_and_verify(models_dir: Path, seed: int, text_encoder_dtype: torch.dtype) -> dict[str, Any]:
    """Write the models and verify them with one copy of the formula weights (what the subprocess runs)."""
    formula = formula_weights.clip_text_state_dict()
    return timed_build(
        lambda: write_tiny_models(models_dir, seed, text_encoder_dtype, formula),
        lambda: verification_report(models_dir, formula),
    )


def builder_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every builder subprocess takes (this module's, tests/support/tiny_sdxl.py's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--comfyui-path", type=Path, required=True)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_builder(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    full: tuple[str, Callable[[Path, int], int]],
    build: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """A builder subprocess's main: import ComfyUI, then, when the option named `full[0]` (e.g. "full_sd15" for
    --full-sd15 PATH) is given, only `full[1](PATH, seed)`; else `build(arguments)` into --models-dir and its JSON
    report to --report."""
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import_comfy(a.comfyui_path)
    option, write_full = full
    if getattr(a, option) is not None:
        write_full(getattr(a, option), a.seed)
        return
    if a.models_dir is None or a.report is None:
        parser.error("--models-dir and --report are required to build the models")
    a.report.write_text(json.dumps(build(a), indent=1))


# ---------------------------------------------------------------------------------------------
# Test-process side: run the subprocess, reuse a build whose stamp matches.


@dataclass(frozen=True)
class BuiltModels:
    """Built (or reused) test models: ComfyUI's verdict on them and what the build cost."""

    models_dir: Path
    sizes: dict[str, int]
    build_seconds: float
    verification: dict[str, Any]
    cached: bool


@dataclass(frozen=True)
class TinyModels(BuiltModels):
    """The tiny SD1.5 checkpoint, inpainting checkpoint and ControlNet."""

    checkpoint: Path
    inpaint_checkpoint: Path
    controlnet: Path


def _stamp(seed: int, text_encoder_dtype: str) -> dict[str, Any]:
    """What a build depends on; a stamp that differs means rebuild."""
    return {"spec_version": SPEC_VERSION, "seed": seed, "text_encoder_dtype": text_encoder_dtype}


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `models_dir` (two sessions sharing a cache build it once)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_builder(models_dir: Path, comfyui_path: Path, module: str, options: list[str], what: str) -> dict[str, Any]:
    """Run builder `module`'s `main` (with `options` after the common arguments) in a fresh interpreter and return
    the report it wrote."""
    report = models_dir / f".build_report_{module.rsplit('.', 1)[-1]}.json"
    report.unlink(missing_ok=True)
    argv = [sys.executable, "-m", module, "--models-dir", str(models_dir), "--comfyui-path", str(comfyui_path)]
    argv += ["--report", str(report), *options]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"building {what} into {models_dir} took over {BUILD_TIMEOUT_S} s") from e
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(
            f"building {what} into {models_dir} failed (exit {done.returncode}); "
            f"command: {' '.join(argv)}\n{done.stderr[-8000:]}"
        )
    return json.loads(report.read_text())


def stamped_build(
    models_dir: Path,
    comfyui_path: Path,
    module: str,
    options: list[str],
    files: list[Path],
    stamp: tuple[str, dict[str, Any]],
    what: str,
) -> BuiltModels:
    """Build `files` with builder `module` in a ComfyUI subprocess, or reuse them when the stamp file `stamp[0]` in
    `models_dir` records the build `stamp[1]` and every file exists; under a lock, so sessions sharing a cache build
    once. `what` names the models in messages."""
    models_dir = Path(models_dir)
    stamp_path, want = models_dir / stamp[0], stamp[1]
    with _locked(models_dir):
        if stamp_path.exists() and all(f.exists() for f in files):
            saved = json.loads(stamp_path.read_text())
            if saved["build"] == want:
                log.info("%s reused from %s", what, models_dir)
                return BuiltModels(models_dir, saved["sizes"], saved["build_seconds"], saved["verification"], True)
        start = time.perf_counter()
        result = _run_builder(models_dir, comfyui_path, module, options, what)
        seconds = time.perf_counter() - start
        stamp_path.write_text(json.dumps({"build": want, "build_seconds": seconds, **result}, indent=1))
    mib = {k: f"{v / 2**20:.0f} MiB" for k, v in result["sizes"].items()}
    log.info("%s built in %.1f s (%s)", what, seconds, mib)
    return BuiltModels(models_dir, result["sizes"], seconds, result["verification"], False)


def build_tiny_models(
    models_dir: Path, comfyui_path: Path, seed: int = 0, text_encoder_dtype: str = "float32"
) -> TinyModels:
    """Build and verify the tiny models into `models_dir` in a ComfyUI subprocess, or reuse a matching build."""
    files = [Path(models_dir) / rel for rel in (CHECKPOINT, INPAINT_CHECKPOINT, CONTROLNET)]
    options = ["--seed", str(seed), "--text-encoder-dtype", text_encoder_dtype]
    stamp = (STAMP_NAME, _stamp(seed, text_encoder_dtype))
    built = stamped_build(models_dir, comfyui_path, "tests.support.tiny_models", options, files, stamp, "tiny models")
    return TinyModels(**vars(built), checkpoint=files[0], inpaint_checkpoint=files[1], controlnet=files[2])


def write_full_sd15_checkpoint(path: Path, seed: int = 0) -> int:
    """A full-size SD1.5 checkpoint on seeded random weights (fp16, as released files are); needs `import_comfy`.

    For GPU benchmarks of training: the real UNet's shapes and cost, not its behaviour.
    """
    te = text_encoder_state_dict(torch.float16)
    sd = sd15_checkpoint_state_dict(full_sd15_unet_config(), seed, torch.float16, text_encoder=te)
    return save_safetensors(sd, Path(path), f"sd15 full-size random seed={seed}")


def main(argv: list[str] | None = None) -> None:
    """The builder subprocess: write the tiny models under --models-dir and a JSON report to --report.

    With --full-sd15 PATH it writes only the full-size random SD1.5 checkpoint there.
    """
    parser = builder_arguments("Build and verify the tiny SD1.5 test models.")
    parser.add_argument("--text-encoder-dtype", default="float32", choices=["float16", "float32"])
    parser.add_argument("--full-sd15", type=Path, help="Write only a full-size random SD1.5 checkpoint here.")
    run_builder(
        parser,
        argv,
        ("full_sd15", write_full_sd15_checkpoint),
        lambda a: build_and_verify(a.models_dir, a.seed, getattr(torch, a.text_encoder_dtype)),
    )


if __name__ == "__main__":
    main()
