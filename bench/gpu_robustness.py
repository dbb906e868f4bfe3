"""The GPU-only failure classes of issue 18, checked on a lent GPU (bench/gpu_all.sh runs this part).

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_robustness.py --device cuda --json gpu_robustness.json
    COMFYUI_PATH=... python bench/gpu_robustness.py --device cpu   # smoke run: the checks that can run on a CPU

Each check prints one line and records {"ok": bool, ...measured values} in the JSON; a check that cannot
run on this machine (one GPU, no second rank) records {"skipped": why}. The exit status is 1 when a check
fails. Checks, each capped by what it allocates (a few GiB at most):

- fp16_identity: the official-size MSID encoder (random weights: values do not matter for range) in fp16
  on real-range crops: the identity vectors are finite and close to fp32's; with its weights scaled
  x1000 (an extreme activation) `FaceEncoder.identity` raises the pack's error naming precision fp32
  instead of returning NaN.
- margin_softmax_half: the margin softmax (93K classes x 1536, s=64) on fp16 embeddings of norm 1e4
  under an fp16 autocast: the loss is finite and equals the fp32 loss (the cosines are computed in fp32).
- out_of_memory_release: a call that holds 2 GiB and then asks for more than the GPU has; caught the way
  nodes/out_of_memory.py does (the frames let go before anything else), memory_allocated is back to the
  baseline at once and a 2 GiB allocation succeeds; beside it, the same error kept in a reference cycle
  (as ComfyUI's executor keeps `sys.exc_info()` in its frame) still holds the 2 GiB until gc.collect().
- state_across_devices: a mapper training state saved from the GPU (`state_file.save_state`) resumes on
  the CPU, and on cuda:1 when there is one, with identical weights and AdamW moments on the new device.
- second_gpu: with two GPUs, the encoder on cuda:1 computes the same identity as on cuda:0 and leaves
  cuda:0's memory untouched (models on another GPU than ComfyUI's first one).
- nccl_peer_to_peer: with two GPUs, whether they can reach each other's memory directly
  (torch.cuda.can_device_access_peer) and whether NCCL_P2P_DISABLE is set: consumer GeForce cards without
  working P2P hang NCCL's first collective; docs/troubleshooting.md says to set NCCL_P2P_DISABLE=1.
- fasa_half (needs COMFYUI_PATH): FreeCure's FASA in fp16 and bf16 through ComfyUI's own attention_pytorch on the
  device (its SDPA backend priority, cuDNN first, included) at SD1.5's 512x512 layer shapes, both routes' code,
  omega 0.5 / 2 / 10 / -10, against FreeCure's formulation in float64 (bench/gpu_fasa_precision_worker.py): finite,
  the rows FASA leaves alone equal to plain attention bit for bit, and the worst error, relative to the largest
  output, at most FASA_TOLERANCE (fp16 0.01, bf16 0.05), reported next to plain attention's own error in that dtype.
- sdxl_text_dtypes (needs COMFYUI_PATH): an SDXL face on the tiny SDXL's towers loaded under --fp16-text-enc,
  --fp32-text-enc, --bf16-text-enc and --fp8_e4m3fn-text-enc on the device
  (tests/integration/library_scripts/sdxl_text_dtypes.py): S* spliced in equals the embedding file exactly (cond
  and pooled), and a mapper trained on the fp16 towers is not reported as trained on other text encoders.
On a CPU (`--device cpu`) the CUDA-only checks are skipped and the two above run on smaller shapes: a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.checkpoints import F2DModels
from f2d_core.errors import F2DError
from f2d_core.identity.face_encoder import FaceEncoder
from f2d_core.identity.mapper import F2DMapper
from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
from f2d_core.training.state_file import load_state, save_state
from tests.support.comfy_library_run import run_library_script
from tests.support.tiny_sdxl import build_tiny_sdxl

log = logging.getLogger("f2d.gpu_robustness")
REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
GIB = 2**30
FASA_TOLERANCE = {"float16": 0.01, "bfloat16": 0.05}  # worst |FASA - float64| / max |float64|, per dtype
CPU_FASA_LAYERS = {"16x16": [16, 16, 320], "8x8": [8, 8, 640]}  # the smoke run's shapes
TEXT_DTYPES = ("fp16", "fp32", "bf16", "fp8_e4m3fn")


def _crops(count: int, device: torch.device) -> torch.Tensor:
    """[count, 3, 112, 112] float32 in [0, 1]: smooth random images with a face's range of values."""
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(count, 3, 14, 14, generator=generator)
    return torch.nn.functional.interpolate(low, size=112, mode="bilinear", align_corners=False).to(device)


def _encoder(device: torch.device, dtype: torch.dtype) -> FaceEncoder:
    torch.manual_seed(0)
    return FaceEncoder(F2DModels(msid=MSIDEncoder(), mapper=F2DMapper(), sources={}), device, dtype)


def check_fp16_identity(device: torch.device) -> dict:
    crops = _crops(32, device)
    fp32 = _encoder(device, torch.float32).identity(crops)
    half = _encoder(device, torch.float16)
    fp16 = half.identity(crops)
    difference = float((fp16 - fp32).abs().max() / fp32.abs().max())
    with torch.no_grad():
        for parameter in half.msid.parameters():
            parameter.mul_(1e3)
    try:
        half.identity(crops)
        named = False
    except F2DError as error:
        named = "choose precision fp32" in str(error)
    finite = bool(torch.isfinite(fp16).all())
    return {"ok": finite and difference < 0.05 and named, "finite": finite, "relative_difference": difference,
            "overflow_named": named}  # fmt: skip


def check_margin_softmax_half(device: torch.device) -> dict:
    classes, dim, batch = 93_431, 1536, 256
    head = ShardedMarginSoftmax(classes, dim).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    embeddings = torch.randn(batch, dim, device=device, generator=generator) * 1e4 / dim**0.5
    labels = torch.randint(classes, (batch,), device=device, generator=generator)
    reference = head(embeddings.float(), labels)
    with torch.autocast(device.type, dtype=torch.float16):
        half = head(embeddings.half(), labels)
    half.backward()
    gradient_finite = bool(torch.isfinite(head.weight.grad).all())
    difference = float((half - reference).abs())
    return {"ok": bool(torch.isfinite(half)) and gradient_finite and difference < 1e-2, "loss_fp32": float(reference),
            "loss_fp16_autocast": float(half), "gradient_finite": gradient_finite}  # fmt: skip


def _fail_holding(device: torch.device) -> None:
    held = torch.empty(2 * GIB, dtype=torch.uint8, device=device)  # noqa: F841 (what the failed call holds)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.empty(2 * total, dtype=torch.uint8, device=device)


def check_out_of_memory_release(device: torch.device) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    # The pack's way: the except block only records the message; the frames go with it.
    message = None
    try:
        _fail_holding(device)
    except OUT_OF_MEMORY as error:
        message = str(error).splitlines()[0]
    released = torch.cuda.memory_allocated(device) - baseline
    again = torch.empty(2 * GIB, dtype=torch.uint8, device=device)
    del again
    # ComfyUI's executor's way: sys.exc_info() kept in a local of the handling frame is a reference cycle.
    kept: Callable[[], None] | None = None

    def handle() -> None:
        nonlocal kept
        try:
            _fail_holding(device)
        except OUT_OF_MEMORY:
            info = sys.exc_info()

            def keep() -> None:
                return info

            kept = keep

    handle()
    cycle_held = torch.cuda.memory_allocated(device) - baseline
    kept = None
    gc.collect()
    after_gc = torch.cuda.memory_allocated(device) - baseline
    torch.cuda.empty_cache()
    return {"ok": message is not None and released == 0, "error": message, "held_after_pack_way_bytes": released,
            "held_in_a_cycle_bytes": cycle_held, "held_after_gc_bytes": after_gc}  # fmt: skip


def _state_round_trip(source: torch.device, target: torch.device, folder: Path) -> bool:
    torch.manual_seed(0)
    mapper = F2DMapper().to(source)
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-5)
    mapper(torch.randn(2, 1536, device=source), None, 1.0).float().square().mean().backward()
    optimizer.step()
    path = save_state(folder / f"state_{source.type}.safetensors", mapper, optimizer, 1, [0.5], {"batch_size": 2})
    resumed = F2DMapper().to(target)
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-5)
    load_state(path, resumed, resumed_optimizer)
    same = all(
        torch.equal(a.cpu(), b.cpu())
        for a, b in zip(mapper.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    moments = [s["exp_avg"] for s in resumed_optimizer.state.values()]
    return same and all(m.device == target for m in moments)


def check_state_across_devices(device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result = {"to_cpu": _state_round_trip(device, torch.device("cpu"), Path(folder))}
        if torch.cuda.device_count() > 1:
            result["to_cuda_1"] = _state_round_trip(device, torch.device("cuda", 1), Path(folder))
    return {"ok": all(result.values()), **result}


def check_second_gpu(device: torch.device) -> dict:
    if torch.cuda.device_count() < 2:
        return {"skipped": "one GPU"}
    crops = _crops(8, device)
    first = _encoder(torch.device("cuda", 0), torch.float32).identity(crops)
    torch.cuda.synchronize(0)
    before = torch.cuda.memory_allocated(0)
    second = _encoder(torch.device("cuda", 1), torch.float32).identity(crops.to("cuda:1"))
    grew = torch.cuda.memory_allocated(0) - before
    difference = float((first.cpu() - second.cpu()).abs().max())
    return {"ok": difference < 1e-4 and grew == 0, "max_difference": difference, "cuda0_growth_bytes": grew}


def check_nccl_peer_to_peer(device: torch.device) -> dict:
    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(k) for k in range(count)]
    if count < 2:
        return {"skipped": "one GPU", "names": names}
    peer = [[k != j and torch.cuda.can_device_access_peer(k, j) for j in range(count)] for k in range(count)]
    return {"ok": True, "names": names, "peer_access": peer, "NCCL_P2P_DISABLE": os.environ.get("NCCL_P2P_DISABLE")}


def check_fasa_half(device: torch.device, comfyui: Path, work_dir: Path) -> dict:
    smoke = {} if device.type == "cuda" else {"layers": CPU_FASA_LAYERS, "omegas": [0.5, 10.0]}
    r = run_library_script(
        REPO_ROOT / "bench" / "gpu_fasa_precision_worker.py", comfyui, library_cpu=device.type != "cuda", **smoke
    )
    ok = all(
        r[d]["finite"] and r[d]["untouched_rows_plain"] and r[d]["fasa_relative_error"] <= tolerance
        for d, tolerance in FASA_TOLERANCE.items()
    )
    return {"ok": ok, "tolerance": FASA_TOLERANCE, **r}


def check_sdxl_text_dtypes(device: torch.device, comfyui: Path, work_dir: Path) -> dict:
    tiny = build_tiny_sdxl(work_dir / "tiny_sdxl", comfyui)
    embeddings = work_dir / "sdxl_text_dtypes_embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    r = run_library_script(
        REPO_ROOT / "tests" / "integration" / "library_scripts" / "sdxl_text_dtypes.py",
        comfyui,
        library_cpu=device.type != "cuda",
        checkpoint=str(tiny.checkpoint),
        te_options=str(tiny.te_options),
        embeddings_dir=str(embeddings),
    )
    ok = all(r[t]["finite"] and r[t]["parity_max_abs"] == 0.0 and r[t]["warning"] is None for t in TEXT_DTYPES)
    ok &= r["fp16"]["fingerprint"] == r["fp32"]["fingerprint"] == r["trained_fingerprint"]
    return {"ok": ok, **r}


CHECKS = {
    "fp16_identity": check_fp16_identity,
    "margin_softmax_half": check_margin_softmax_half,
    "out_of_memory_release": check_out_of_memory_release,
    "state_across_devices": check_state_across_devices,
    "second_gpu": check_second_gpu,
    "nccl_peer_to_peer": check_nccl_peer_to_peer,
    "fasa_half": check_fasa_half,
    "sdxl_text_dtypes": check_sdxl_text_dtypes,
}
WITH_COMFYUI = {"fasa_half", "sdxl_text_dtypes"}  # run ComfyUI as a library; also on a CPU (smoke run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the checks), or cpu (a smoke run of the ComfyUI ones)")
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    parser.add_argument("--work-dir", type=Path, default=None, help="Where the tiny SDXL is built (default: temp).")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="Run these checks only.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu") or (device.type == "cuda" and not torch.cuda.is_available()):
        log.error("these checks need a CUDA GPU (--device cuda), or --device cpu for a smoke run")
        return 1
    cuda = device.type == "cuda"
    results = {"gpu": torch.cuda.get_device_name(device) if cuda else "", "torch": torch.__version__}
    failed = False
    with tempfile.TemporaryDirectory(prefix="f2d_gpu_robustness_") as temporary:
        work_dir = args.work_dir or Path(temporary)
        for name in args.only or CHECKS:
            start = time.perf_counter()
            try:
                if name in WITH_COMFYUI and not args.comfyui:
                    result = {"skipped": "needs ComfyUI: set COMFYUI_PATH or pass --comfyui"}
                elif name in WITH_COMFYUI:
                    result = CHECKS[name](device, args.comfyui, work_dir)
                elif not cuda:
                    result = {"skipped": "needs CUDA"}
                else:
                    result = CHECKS[name](device)
            except Exception as error:  # a check that crashes is a failed check; the others still run
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"[-4000:]}
            result["seconds"] = round(time.perf_counter() - start, 2)
            results[name] = result
            failed |= result.get("ok") is False
            log.info("%s: %s", name, json.dumps(result))
            if args.json:  # after each check: a run cut short by its time cap keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
