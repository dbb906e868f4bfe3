"""Run a test script with ComfyUI imported as a library, in a subprocess, and get its results back as JSON.

ComfyUI's top-level modules (`nodes`, `utils`, `tests`) collide with this repository's packages, so
code that needs ComfyUI's objects (a loaded checkpoint, the pack's ComfyUI backend) runs in a fresh
interpreter: this file, run as a script, imports ComfyUI (CPU) and the pack as `comfyui_face2diffusion`
through `cli/comfy_library.py`, imports the test script, calls its `main(**kwargs)` and writes the
JSON-able dict it returns.

    result = run_library_script(SCRIPTS / "train_guards.py", comfyui_path, checkpoint=str(path))

A script imports the pack by that name (`from comfyui_face2diffusion.f2d_core... import ...`) and
ComfyUI's modules as usual; it cannot import `tests.*` (ComfyUI's own `tests` wins there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARY = REPO_ROOT / "cli" / "comfy_library.py"
DEFAULT_TIMEOUT_S = 900


class LibraryScriptFailed(RuntimeError):
    """The script raised, or its subprocess died; the message carries the end of its output."""


def run_library_script(
    script: Path, comfyui_path: Path, timeout: float = DEFAULT_TIMEOUT_S, library_cpu: bool = True, **kwargs: Any
) -> Any:
    """Run `main(**kwargs)` of `script` in a subprocess with ComfyUI as a library; return what it returned.

    ComfyUI runs on the CPU unless `library_cpu` is False (then on the GPU, when torch sees one).
    """
    script = Path(script).resolve()
    fd, name = tempfile.mkstemp(prefix=f"f2d_{script.stem}_", suffix=".json")
    os.close(fd)
    result_path = Path(name)
    result_path.unlink()  # the child writes it only when main returned
    argv = [sys.executable, __file__, "--comfyui", str(comfyui_path), "--script", str(script)]
    argv += ["--kwargs", json.dumps(kwargs), "--result", str(result_path)]
    argv += [] if library_cpu else ["--gpu"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or not result_path.exists():
            raise LibraryScriptFailed(
                f"{script.name} failed (exit {done.returncode}) after {time.perf_counter() - start:.0f} s:\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-12000:]}"
            )
        log.info("%s ran in %.1f s", script.name, time.perf_counter() - start)
        return json.loads(result_path.read_text())
    except subprocess.TimeoutExpired as e:
        raise LibraryScriptFailed(f"{script.name} did not finish in {timeout:.0f} s") from e
    finally:
        result_path.unlink(missing_ok=True)


def _import_file(name: str, path: Path):
    """Import a file as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _child(argv: list[str] | None = None) -> None:
    """The subprocess: bootstrap ComfyUI and the pack, run the script's main, write its result."""
    parser = argparse.ArgumentParser(description="Run a script with ComfyUI as a library (test helper).")
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--gpu", action="store_true", help="Let ComfyUI use the GPU (default: CPU).")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]  # nothing of ours shadows ComfyUI
    library = _import_file("f2d_comfy_library", LIBRARY)
    library.bootstrap(a.comfyui, cpu=not a.gpu)
    script = _import_file(f"f2d_library_script_{a.script.stem}", a.script)
    result = script.main(**json.loads(a.kwargs))
    a.result.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    _child()
