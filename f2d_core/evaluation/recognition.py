"""An ArcFace-style ONNX face recogniser (insightface's `w600k_r50.onnx`, `glintr100.onnx`) run through torch.

The ONNX graph is converted with `onnx2torch` and runs on any torch device; onnxruntime is not used.
Input normalisation follows insightface's `model_zoo/arcface_onnx.py`: RGB pixels in 0..255 become
`(x - 127.5) / 127.5`, except for mxnet exports whose first 8 nodes include both a Sub and a Mul
(they normalise inside the graph): those get the raw 0..255 pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelPackError, WeightFileError
from ..faces.alignment import align_faces
from ..faces.onnx_to_torch import OnnxModule, load_onnx
from .clip_models import weights_device

log = logging.getLogger(__name__)

ARCFACE_INPUT_SIZE = 112
MIN_EMBEDDING_DIM = 64  # dlib 128, ArcFace 512: anything narrower is not a face embedding
_HOW_TO_FIX = (
    "Choose an ArcFace-style recognition model: w600k_r50.onnx (buffalo_l) or glintr100.onnx (antelopev2), "
    "or any ONNX with one 1x3x112x112 image input and one embedding output."
)


def _dims(value_info) -> list[int | str]:
    """The shape of an ONNX graph input/output: ints, or the symbolic name ('' when unnamed)."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _normalises_inside(graph) -> bool:
    """insightface's rule: an mxnet export whose first 8 nodes hold a Sub and a Mul normalises itself."""
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


def _check_structure(path: Path, graph) -> int:
    """The square input size of a recogniser graph, or a WeightFileError saying why it is not one."""
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise WeightFileError(
            f"{path} is not a face recogniser: it has {len(inputs)} input(s) and {len(graph.output)} output(s) "
            f"(a face detector such as det_10g.onnx has 9 outputs; a recogniser has 1). {_HOW_TO_FIX}"
        )
    shape, out_shape = _dims(inputs[0]), _dims(graph.output[0])
    if len(shape) != 4 or shape[1] not in (3, "") or len(out_shape) not in (0, 2):
        raise WeightFileError(
            f"{path} is not a face recogniser: its input is {shape} and its output {out_shape}; a recogniser takes "
            f"[N, 3, 112, 112] and gives [N, 512]. {_HOW_TO_FIX}"
        )
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0:
        if height != width:
            raise WeightFileError(f"{path}: input {width}x{height} is not square. {_HOW_TO_FIX}")
        return height
    return ARCFACE_INPUT_SIZE


class FaceRecognizer:
    """ArcFace-style embeddings of aligned faces, computed wherever `network` is.

    `embed(crops)`: crops [N, 3, S, S] RGB float in [0, 1], aligned to the ArcFace template at the
    model's input size S (112) -> L2-normalised embeddings [N, D] float32 (D = 512 for ArcFace).
    `prepare()` runs before every forward pass (the node layer makes it load the weights onto
    ComfyUI's device).
    """

    def __init__(self, path: Path | str, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        self.prepare: Callable[[], object] = lambda: None
        device = torch.device(device)
        if not self.path.is_file():
            raise WeightFileError(f"face recognition model {self.path} does not exist. {_HOW_TO_FIX}")
        try:
            model = load_onnx(self.path)
        except ModelPackError as exc:  # a file that is not ONNX
            raise WeightFileError(
                f"{self.path} cannot be read as an ONNX model ({exc.__cause__!r}); a damaged download or "
                f"another kind of file. {_HOW_TO_FIX}"
            ) from exc
        self.input_size = _check_structure(self.path, model.graph)
        self.input_mean, self.input_std = (0.0, 1.0) if _normalises_inside(model.graph) else (127.5, 127.5)
        try:
            self.network: nn.Module = OnnxModule(model, str(self.path)).eval().to(device)
        except ModelPackError as exc:  # an operator onnx2torch cannot convert, or a bad graph
            raise WeightFileError(
                f"{self.path}: cannot convert the ONNX graph to torch ({exc.__cause__!r}). {_HOW_TO_FIX}"
            ) from exc
        self.embedding_dim = self._probe()
        log.info(
            "face recogniser %s: %dx%d -> %d-d on %s",
            self.path.name,
            self.input_size,
            self.input_size,
            self.embedding_dim,
            device,
        )

    @property
    def device(self) -> torch.device:
        """Where the network's weights are now."""
        return weights_device(self.network)

    def _probe(self) -> int:
        """Run one black face to learn the embedding width; a WeightFileError when it is not an embedding."""
        try:
            out = self._forward(torch.zeros(2, 3, self.input_size, self.input_size, device=self.device))
        except Exception as exc:  # a graph that converts but does not run on an image batch
            raise WeightFileError(f"{self.path} does not run on a face image batch ({exc}). {_HOW_TO_FIX}") from exc
        if out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < MIN_EMBEDDING_DIM:
            raise WeightFileError(
                f"{self.path} is not a face recogniser: a batch of 2 faces gives shape {list(out.shape)}, not "
                f"[2, D] with D >= {MIN_EMBEDDING_DIM}. {_HOW_TO_FIX}"
            )
        return int(out.shape[1])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The network on RGB pixels in 0..255, normalised as insightface does."""
        return self.network((pixels - self.input_mean) / self.input_std)[0]

    @torch.inference_mode()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings [N, D] float32 of aligned RGB crops [N, 3, S, S] in [0, 1]."""
        if crops.shape[0] == 0:
            return torch.zeros(0, self.embedding_dim)
        self.prepare()
        pixels = crops.to(self.device, torch.float32) * 255.0
        return nn.functional.normalize(self._forward(pixels).float(), dim=-1).cpu()

    def align(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """ArcFace-aligned crops [N, 3, S, S] from images [N, 3, H, W] in [0, 1] and 5-point landmarks [N, 5, 2]."""
        return align_faces(images.to(self.device, torch.float32), landmarks, self.input_size)


def load_face_recognizer(path: Path | str, device: torch.device | str = "cpu") -> FaceRecognizer:
    """A FaceRecognizer converted from the .onnx file (callers keep it; ComfyUI's nodes cache it)."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"face recognition model {path} does not exist. {_HOW_TO_FIX}")
    return FaceRecognizer(path, device)
