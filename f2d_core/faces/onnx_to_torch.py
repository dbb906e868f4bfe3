"""Run an ONNX model (an insightface pack member) as a torch module, on any torch device.

The graph is converted node by node with `onnx2torch` (PyPI), so no onnxruntime build is needed: the
model runs where the user's torch runs (CUDA, ROCm, MPS, CPU). `onnx` and `onnx2torch` are imported
here, when a model is loaded, never when the pack is imported.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import MissingPackageError, ModelPackError

logger = logging.getLogger(__name__)


def import_package(module: str, needed_for: str, fix: str) -> ModuleType:
    """`import module`, or a MissingPackageError naming the module, the import error and `fix`.

    Catches every exception, not only ImportError: a broken native library also raises OSError, and
    a NumPy ABI mismatch raises AttributeError or ValueError at import.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise MissingPackageError(
            f"{needed_for} needs the Python package '{module}', but `import {module}` failed: "
            f"{type(exc).__name__}: {exc}. {fix}"
        ) from exc


REINSTALL = "Install the pack's requirements in the Python that runs ComfyUI: pip install -r requirements.txt"


def load_onnx(path: Path | str) -> Any:
    """The parsed `onnx.ModelProto` of a file, or a ModelPackError naming the file."""
    onnx = import_package("onnx", "reading insightface .onnx models", REINSTALL)
    try:
        return onnx.load_model(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError or OSError for a damaged file
        raise ModelPackError(
            f"cannot read {path} ({type(exc).__name__}: {exc}). The file is damaged or not an ONNX model "
            "(an interrupted download?): download it again."
        ) from exc


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch module: inputs in graph order, a tuple of outputs in graph order."""

    def __init__(self, model: Any, source: str) -> None:
        super().__init__()
        onnx2torch = import_package("onnx2torch", "running insightface models with torch", REINSTALL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # onnx2torch warns about modes it maps exactly for SCRFD
                self.graph = onnx2torch.convert(model)
        except Exception as exc:  # NotImplementedError for an operator it does not know, ValueError, KeyError
            raise ModelPackError(
                f"{source} cannot be run with torch ({type(exc).__name__}: {exc}). Use the detector of an "
                "insightface pack such as buffalo_l or antelopev2."
            ) from exc
        self.source = source
        self.output_names = tuple(o.name for o in model.graph.output)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the graph; always a tuple, one tensor per graph output."""
        out = self.graph(*inputs)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def onnx_module(path: Path | str, device: torch.device | str = "cpu") -> tuple[OnnxModule, Any]:
    """Load an .onnx file as an eval-mode `OnnxModule` on `device`, with its `onnx.ModelProto` (for its shapes).

    Raises ModelPackError for a damaged file or an operator onnx2torch cannot convert, and
    MissingPackageError when onnx / onnx2torch do not import.
    """
    model = load_onnx(path)
    module = OnnxModule(model, str(path)).to(device).eval()
    logger.debug("%s converted to torch on %s", path, device)
    return module, model
