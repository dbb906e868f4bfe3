"""Read weight files safely and say plainly what is wrong with a bad one.

Only `.safetensors` and `torch.load(weights_only=True)` are used: no arbitrary unpickling. The
restricted unpickler of `weights_only=True` could itself be made to run code up to torch 2.5.1
(CVE-2025-32434) and again before 2.10 (CVE-2026-24747), so below `SAFE_TORCH` pickle files
(`.pt`, `.pth`, `.bin`) are refused and only `.safetensors` are read.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from .errors import WeightFileError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# The first torch release whose `torch.load(weights_only=True)` has no known code-execution flaw
# (CVE-2025-32434 fixed in 2.6.0; CVE-2026-24747 fixed in 2.10.0).
SAFE_TORCH = (2, 10)

# Key fragments that give away which model a file really holds, checked in order.
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("conditioner.embedders.", "an SDXL checkpoint"),
    ("model.diffusion_model.", "a Stable Diffusion checkpoint"),
    ("cond_stage_model.", "a Stable Diffusion checkpoint"),
    ("double_blocks.", "a Flux model"),
    ("joint_blocks.", "an SD3 model"),
    ("image_proj.", "an IP-Adapter model"),
    ("ip_adapter.", "an IP-Adapter model"),
    ("lora_", "a LoRA"),
    ("lora.", "a LoRA"),
    ("vision_model.", "a CLIP vision model"),
    ("text_model.", "a CLIP text encoder"),
    ("input_hint_block.", "a ControlNet"),
    ("norms.layer_", "the F2D MSID encoder (msid.pt)"),
    ("heads.g.i2t_first.", "an F2D SDXL mapper"),
    ("i2t_first.", "the F2D mapper (mapping.pt)"),
    ("null_exp", "the F2D mapper (mapping.pt)"),
    ("final_layers.", "a Deep3DFaceRecon expression model"),
    ("cp.resnet.", "a BiSeNet face-parsing model"),
    ("decoder.up_blocks.", "a VAE"),
    ("first_stage_model.", "a VAE"),
)

_WRAPPER_KEYS = ("state_dict", "model", "module")


def describe_weights(keys: list[str]) -> str | None:
    """A guess of what model a list of keys belongs to, for error messages."""
    for fragment, what in _SIGNATURES:
        if any(fragment in k for k in keys):
            return what
    return None


def torch_release(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of a torch version string such as "2.9.1+cu128" (default: the running torch)."""
    match = re.match(r"(\d+)\.(\d+)", str(version if version is not None else torch.__version__))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_pickle_allowed(path: Path) -> None:
    """Raise a WeightFileError for a pickle weight file when the running torch is older than `SAFE_TORCH`.

    Source: CVE-2025-32434 (torch <= 2.5.1) and CVE-2026-24747 (torch < 2.10): a crafted `.pt` file runs
    code even through `torch.load(weights_only=True)`.
    """
    if torch_release() >= SAFE_TORCH:
        return
    safe = ".".join(map(str, SAFE_TORCH))
    raise WeightFileError(
        f"{path} is a pickle file, and torch {torch.__version__} can be made to run code while loading one even "
        f"with weights_only=True (CVE-2025-32434, CVE-2026-24747), so this pack does not open it. Convert it once "
        f"to .safetensors with `python custom_nodes/comfyui-face2diffusion/cli/convert.py --each {path}` "
        f"(msid.pt and mapping.pt together: `cli/convert.py msid.pt mapping.pt`; in the node pack's folder also "
        f"`python -m f2d_core.convert --each {path.name}`) run under torch >= {safe} in any Python environment, "
        f"or download a .safetensors of it, and choose that file; or update ComfyUI's torch to {safe} or newer."
    )


def load_torch_file(path: Path, hint: str = "") -> object:
    """`torch.load(weights_only=True)` (memory-mapped when zipped), with errors that say what is wrong.

    Raises WeightFileError below torch `SAFE_TORCH` (see `check_pickle_allowed`), for pickled objects
    other than tensors, and for a truncated file or a saved web page.
    """
    check_pickle_allowed(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if blocked is None:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise _unreadable(path, lines[-1] if lines else type(e).__name__, hint) from None
        raise WeightFileError(
            f"{path} holds pickled Python objects ({blocked.group(1)}) besides tensors, so it is not loaded: this "
            f"pack never unpickles code. {hint or 'Use the released weight file, or convert it to .safetensors.'}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise _unreadable(path, str(e).splitlines()[0] if str(e) else type(e).__name__, hint) from None


def _unreadable(path: Path, detail: str, hint: str = "") -> WeightFileError:
    with open(path, "rb") as f:
        start = f.read(512).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return WeightFileError(
            f"{path} is a web page, not a weight file ({path.stat().st_size} bytes of HTML): the browser saved the "
            "download page (Google Drive shows one for large files: 'can't scan this file for viruses') instead of "
            f"the file. Open the link again, confirm 'Download anyway', and replace this file. {hint}".rstrip()
        )
    return WeightFileError(
        f"{path} could not be read as a PyTorch weight file: it is truncated (an incomplete download?) or "
        f"not a weight file at all ({path.stat().st_size} bytes). {hint or 'Download it again.'} Detail: {detail}"
    )


def _unwrap(obj: object, path: Path, select: str | None = None) -> StateDict:
    """A flat name -> tensor dict from a loaded object: `obj[select]`, or unwrapping `{"state_dict": ...}`."""
    if select is not None and isinstance(obj, Mapping) and isinstance(obj.get(select), Mapping):
        obj = obj[select]
    while isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in _WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, Mapping) or not obj:
        raise WeightFileError(
            f"{path} holds {type(obj).__name__}, not a dict of tensors (a state dict): "
            f"it is not a weight file this pack can use."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    for key in bad:  # a training checkpoint of a known model (Deep3DFaceRecon's epoch_20.pth: "net_recon")
        guess = describe_weights(list(obj[key])) if isinstance(obj[key], Mapping) else None
        if guess:
            raise WeightFileError(
                f"{path} is {guess} (a training checkpoint holding it as {key!r}), not the weights this input takes."
            )
    if bad:
        raise WeightFileError(
            f"{path} is not a plain state dict: entries {bad[:5]} are not tensors "
            f"(a training checkpoint with optimizer state or settings?). Use the released weights."
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def read_weights(path: Path | str, select: str | None = None, hint: str = "") -> tuple[StateDict, dict[str, str]]:
    """(tensors, metadata) of a `.safetensors` or PyTorch weight file, with readable errors.

    select: the entry to read when a PyTorch file holds several (e.g. "net_recon" of a training
    checkpoint); hint: what to do, appended to errors about an unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"Weight file {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightFileError(
                f"{path} is not a valid .safetensors file: it is truncated (an incomplete "
                f"download?) or damaged. Download or convert it again. Detail: {e}"
            ) from None
    return _unwrap(load_torch_file(path, hint), path, select), {}


def key_problems(sd: StateDict, want: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing keys, unexpected keys and wrong shapes of `sd` against `want`, as short phrases."""
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong_shape = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in want.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensors of the wrong shape ({'; '.join(wrong_shape[:2])})")
    return problems


def check_state_dict(sd: StateDict, model: nn.Module, path: Path | str, expected: str) -> None:
    """Raise a WeightFileError naming the file if `sd` cannot load strictly into `model`."""
    problems = key_problems(sd, model.state_dict())
    if not problems:
        return
    guess = describe_weights(list(sd))
    intro = f"{path} is not {expected}"
    intro += f": it looks like {guess}." if guess and guess != expected else "."
    raise WeightFileError(f"{intro} {'; '.join(problems)}.", fix="Pick the right file for this input.")


def load_into(model_type: Callable[[], nn.Module], sd: StateDict, path: Path | str, expected: str) -> nn.Module:
    """Build `model_type()` without initialising it, check `sd` fits, load it strictly; eval mode."""
    with torch.device("meta"):
        model = model_type()
    check_state_dict(sd, model, path, expected)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
