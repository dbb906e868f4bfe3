"""Worker of bench/freecure_speed.py: ComfyUI as a library; plain F2D, straightforward FreeCure and the fast
route, interleaved in one process, with wall time and peak memory per arm. Run through run_library_script."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import threading
import time

import comfy.model_management
import comfy.sd
import psutil
import torch
from comfyui_face2diffusion.f2d_core.conditioning.identity_start import class_prompt
from comfyui_face2diffusion.f2d_core.faces.face_parsing import load_face_parser
from comfyui_face2diffusion.f2d_core.freecure.apg import template_prompt
from comfyui_face2diffusion.f2d_core.freecure.attributes import parse_attribute_list
from comfyui_face2diffusion.nodes import freecure_apg, freecure_model, freecure_run

PROMPT = "a photo of f l with blonde curly hair, wearing sunglasses, laughing"


class PeakMemory:
    """Peak bytes over a block: CUDA's allocator peak on a GPU, else the process's resident set (sampled)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc, self.base, self.stop = psutil.Process(), psutil.Process().memory_info().rss, False
            self.peak_rss = self.base

            def sample() -> None:
                while not self.stop:
                    self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                    time.sleep(0.005)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True
            self.thread.join()
            self.peak = self.peak_rss - self.base


def main(
    checkpoint: str,
    parser_path: str,
    size: int = 64,
    steps: int = 4,
    rounds: int = 3,
    batch: int = 1,
    sampler: str = "euler",
    omega: float = 0.5,
    mask_fraction: float = 0.3,
    profile_rows: int = 0,
) -> dict:
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    device = comfy.model_management.get_torch_device()
    parser = load_face_parser(parser_path).to(device)  # on the sampling device, as the node's model management puts it
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))  # S* changes values, not cost
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    foundation = freecure_run.foundation_conditioning(clip, positive, PROMPT, "f l", "woman")
    latent = {"samples": torch.zeros(batch, 4, size // 8, size // 8)}
    # A fixed attribute mask (the top `mask_fraction` of the image) so that FASA does its full work whatever
    # the random test weights draw; on real weights the parsed hair/glasses masks are of this order.
    external = torch.zeros(1, size, size)
    external[:, : int(size * mask_fraction)] = 1.0
    choice = parse_attribute_list("auto", PROMPT)
    sampling = freecure_run.Sampling(0, steps, 7.0, sampler, "normal")

    def plain() -> dict:
        out = freecure_model.ksample(model, 0, steps, 7.0, sampler, "normal", positive, negative, latent)
        return {"refined": out}

    def run(route: str):
        def arm() -> dict:
            settings = freecure_run.FasaSettings(omega=omega, route=route)
            r = freecure_run.run_freecure(
                model, vae, parser, positive, foundation, negative, latent, sampling, settings, choice, external
            )
            return {"refined": r.refined, "foundation": r.foundation, "report": r.report}

        return arm

    fd_text = class_prompt(PROMPT, "f l", "woman")
    template = freecure_apg.text_conditioning(clip, positive, template_prompt(fd_text))

    def fast_apg() -> dict:
        out = run("fast")()
        out["refined"], _ = freecure_apg.run_apg(
            model, out["refined"], template, foundation, negative, steps, 7.0, "normal", 0.5
        )
        return out

    arms = {
        "plain F2D": plain,
        "straightforward FreeCure": run("straightforward"),
        "fast FreeCure": run("fast"),
        "fast FreeCure + APG": fast_apg,
    }
    plain()  # warm-up: model load, first-call overheads
    times: dict[str, list[float]] = {name: [] for name in arms}
    peaks: dict[str, int] = dict.fromkeys(arms, 0)
    outputs: dict[str, dict] = {}
    names = list(arms)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                outputs[name] = arms[name]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], mem.peak)
    base = statistics.median(times["plain F2D"])
    fast, straight = outputs["fast FreeCure"], outputs["straightforward FreeCure"]
    profile = _profile(run("fast"), profile_rows) if profile_rows > 0 else None
    return {
        "profile_fast": profile,
        "device": str(device),
        "size": size,
        "steps": steps,
        "batch": batch,
        "sampler": sampler,
        "rounds": rounds,
        "median_seconds": {n: statistics.median(t) for n, t in times.items()},
        "ratio_to_plain": {n: statistics.median(t) / base for n, t in times.items()},
        "peak_memory_mib": {n: p / 2**20 for n, p in peaks.items()},
        "fast_vs_straightforward_max_abs": {
            "refined": float((fast["refined"] - straight["refined"]).abs().max()),
            "foundation": float((fast["foundation"] - straight["foundation"]).abs().max()),
        },
        "fast_vs_plain_max_abs": float((fast["refined"] - outputs["plain F2D"]["refined"]).abs().max()),
        "report_fast": fast["report"],
        "report_straightforward": straight["report"],
    }


def _profile(arm, rows: int) -> dict:
    """One run of `arm` under cProfile: its stage seconds (from the report) and the `rows` functions with the most
    own time (pstats lines: calls, tottime, percall, cumtime, percall, function)."""
    profiler = cProfile.Profile()
    profiler.enable()
    out = arm()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(rows)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return {"stages": [line for line in out["report"] if line.startswith("seconds")], "top_tottime": lines}
