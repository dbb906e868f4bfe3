"""ComfyUI as a library, and this pack imported under a package name, for headless tools such as train_mapper.

ComfyUI's own top-level modules (`nodes`, `utils`, `server`, ...) must be the ones Python finds, so
this repository's root never goes on `sys.path`. The pack is imported from its `__init__.py` as the
package `PACK_NAME` (as ComfyUI itself imports a custom node folder), and its modules are then
reached as `PACK_NAME.nodes.training.comfy_backend`, `PACK_NAME.f2d_core...`, unchanged.

    pack = bootstrap(comfyui="/opt/comfyui", cpu=False)   # before anything imports comfy.model_management
    backend_module = pack_module("nodes.training.comfy_backend")
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

PACK_NAME = "comfyui_face2diffusion"
REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_ENV = "COMFYUI_PATH"
_COMFYUI_FILES = ("main.py", "nodes.py", "comfy/sd.py", "folder_paths.py")
_SHADOWING = ("nodes", "utils", "server", "tests")  # names this repository and ComfyUI both use


class ComfyLibraryError(RuntimeError):
    """ComfyUI could not be found or imported as a library."""


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """The ComfyUI checkout: `explicit`, else $COMFYUI_PATH; an error naming both when neither is one."""
    value = explicit or os.environ.get(COMFYUI_ENV)
    if not value:
        raise ComfyLibraryError(f"Where is ComfyUI? Pass --comfyui PATH or set {COMFYUI_ENV} to a ComfyUI checkout.")
    path = Path(value).expanduser().resolve()
    missing = [f for f in _COMFYUI_FILES if not (path / f).is_file()]
    if missing:
        raise ComfyLibraryError(f"{path} is not a ComfyUI checkout (no {', '.join(missing)}).")
    return path


def _clean_sys_path() -> None:
    """Drop this repository (and its `cli/` folder, sys.path[0] of a script run) from sys.path."""
    ours = {REPO_ROOT, REPO_ROOT / "cli"}
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() not in ours]


def _check_not_shadowed(comfyui: Path) -> None:
    """Fail early when a module of ours was imported under a name ComfyUI needs for its own."""
    for name in _SHADOWING:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) or ""
        if module is not None and not Path(origin).resolve().is_relative_to(comfyui):
            raise ComfyLibraryError(
                f"Module {name!r} was imported from {origin or module} before ComfyUI ({comfyui}); run this tool as "
                "a script (python cli/...), not from a process that has this repository on sys.path."
            )


def import_comfyui(comfyui: Path, cpu: bool = False) -> bool:
    """Put ComfyUI first on sys.path and configure its args before `comfy.model_management` loads.

    CPU mode is set when asked or when torch sees no CUDA GPU. Returns whether ComfyUI runs on the CPU.
    """
    import torch

    _clean_sys_path()
    _check_not_shadowed(comfyui)
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))
    importlib.import_module("utils.extra_config")  # as main.py does: ComfyUI's `utils` package, before
    # its nodes.py puts comfy/ first on sys.path (where a plain `utils` would be comfy/utils.py)
    from comfy.cli_args import args

    if "comfy.model_management" in sys.modules and args.cpu != (cpu or not torch.cuda.is_available()):
        raise ComfyLibraryError("comfy.model_management was imported before its device could be chosen.")
    args.cpu = bool(cpu or not torch.cuda.is_available())
    return args.cpu


def import_pack(name: str = PACK_NAME) -> ModuleType:
    """Import this repository as the package `name` (its submodules resolve inside it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    if spec is None or spec.loader is None:
        raise ComfyLibraryError(f"Cannot import the Face2Diffusion pack from {REPO_ROOT}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def pack_module(relative: str) -> ModuleType:
    """A module of the imported pack, e.g. `pack_module("f2d_core.training.trainer")`."""
    return importlib.import_module(f"{PACK_NAME}.{relative}")


def bootstrap(comfyui: str | os.PathLike | None = None, cpu: bool = False) -> ModuleType:
    """Find and import ComfyUI (CPU when asked or without CUDA), then import the pack; return the pack."""
    path = find_comfyui(comfyui)
    on_cpu = import_comfyui(path, cpu)
    log.debug("ComfyUI %s imported as a library (%s)", path, "CPU" if on_cpu else "GPU")
    return import_pack()
