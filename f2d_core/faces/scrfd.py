"""SCRFD face detection in torch: an insightface pack's detector graph run with torch, decoded as insightface does.

Every step follows insightface's `model_zoo/scrfd.py` (`SCRFD._init_vars`, `forward`, `detect`,
`_detect_candidates`, `nms`): the structure read from the graph's outputs (6/9 outputs: strides
8/16/32 with 2 anchors per location; 10/15: strides 8..128 with 1; 9 and 15 carry keypoints;
outputs `[N, C]` or batched `[1, N, C]`; a fixed or free input size), the image fitted into the
detection size at the top left of a black canvas (`det_scale`), the blob `(pixel - 127.5) / 128` in
RGB order, anchor centres on each stride's grid, boxes and keypoints as distances from them times the
stride, the score threshold, and greedy NMS at IoU 0.4 with insightface's +1 pixel box areas.
The one difference: the resize is torch's bilinear (antialias off, half-pixel centres, rounded to
uint8 levels as cv2 rounds) instead of cv2's fixed-point INTER_LINEAR: pixels differ by at most one
uint8 level where the image is scaled, and are identical where it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelPackError
from .onnx_to_torch import onnx_module

INPUT_MEAN = 127.5  # insightface SCRFD.input_mean
INPUT_STD = 128.0  # insightface SCRFD.input_std
NMS_THRESHOLD = 0.4  # insightface SCRFD.nms_thresh
# insightface SCRFD._init_vars: number of graph outputs -> (strides, anchors per location, keypoints).
OUTPUT_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


@dataclass(frozen=True)
class ScrfdLayout:
    """How an SCRFD graph lays out its outputs (scores, boxes, keypoints; each per stride, in that order)."""

    strides: tuple[int, ...]
    num_anchors: int
    use_kps: bool
    batched: bool  # outputs [1, N, C] instead of [N, C]
    fixed_size: tuple[int, int] | None  # (width, height) when the graph's input size is fixed


def scrfd_layout(model, source: str) -> ScrfdLayout:
    """The layout of an `onnx.ModelProto` SCRFD graph, as insightface's SCRFD reads it; ModelPackError if none."""
    outputs = model.graph.output
    if len(outputs) not in OUTPUT_LAYOUTS:
        raise ModelPackError(
            f"{source} is not an SCRFD face detector: it has {len(outputs)} outputs, SCRFD has 6, 9, 10 or 15."
        )
    strides, anchors, use_kps = OUTPUT_LAYOUTS[len(outputs)]
    batched = len(outputs[0].type.tensor_type.shape.dim) == 3
    dims = model.graph.input[0].type.tensor_type.shape.dim
    spatial = [d.dim_value for d in dims[2:4]] if len(dims) == 4 else []
    fixed = (spatial[1], spatial[0]) if len(spatial) == 2 and min(spatial) > 0 else None
    return ScrfdLayout(strides, anchors, use_kps, batched, fixed)


def resize_like_cv2(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, C, H, W] float pixels (0..255) resized to height x width as `cv2.resize(INTER_LINEAR)` does.

    Bilinear with half-pixel centres and no antialiasing, rounded to whole levels: within one uint8
    level of cv2 (insightface's SCRFD resize); the same size is returned unchanged.
    """
    if tuple(image.shape[-2:]) == (height, width):
        return image
    image = F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return image.round_().clamp_(0, 255)


def letterbox(rgb: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """An RGB uint8 image [H, W, 3] fitted into input_size (width, height) at the top left of a black canvas.

    Returns the network input [1, 3, height, width] float32, `(pixel - 127.5) / 128`, and `det_scale`
    (detector pixels per image pixel), with insightface's rounding of the fitted size.
    """
    height, width = rgb.shape[:2]
    in_w, in_h = input_size
    im_ratio = float(height) / width
    if im_ratio > float(in_h) / in_w:
        new_h = in_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = in_w
        new_h = int(new_w * im_ratio)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    det_scale = float(new_h) / height
    image = resize_like_cv2(rgb.permute(2, 0, 1)[None].float(), new_h, new_w)
    canvas = image.new_zeros(1, 3, in_h, in_w)
    canvas[:, :, :new_h, :new_w] = image
    return (canvas - INPUT_MEAN) * (1.0 / INPUT_STD), det_scale


def anchor_centres(height: int, width: int, stride: int, num_anchors: int, device: torch.device) -> torch.Tensor:
    """[height * width * num_anchors, 2] float32 (x, y) centres, row-major, each repeated per anchor."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    centres = torch.stack([xs, ys], dim=-1).to(torch.float32).reshape(-1, 2) * stride
    return centres.repeat_interleave(num_anchors, dim=0) if num_anchors > 1 else centres


def nms(dets: torch.Tensor, threshold: float = NMS_THRESHOLD) -> torch.Tensor:
    """insightface's greedy NMS: indices of kept rows of dets [N, 5] (x1, y1, x2, y2, score), best first.

    Box areas count +1 pixel per side, as in insightface (`SCRFD.nms`); a box is dropped when its
    IoU with a kept, higher-scoring box exceeds `threshold`.
    """
    x1, y1, x2, y2, scores = dets.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0.0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0.0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def match_layout(net: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """Lay out `net`'s 4-D weights for computing on `device`; return the input layout to use with them.

    Channels-last on the CPU, where oneDNN convolutions take about 0.7x the time (bench/detection.py);
    contiguous elsewhere (MPS and CUDA run these fp32 convolutions in the contiguous layout). Moving a
    module keeps its weights' layout, so weights laid out on the offload device (the CPU) would keep
    channels-last on the GPU: they are re-laid here when their layout does not fit `device`.
    """
    wanted = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    weights = [p for p in net.parameters() if p.ndim == 4]
    if weights and not all(w.is_contiguous(memory_format=wanted) for w in weights):
        with torch.inference_mode(False):  # plain tensors, which ComfyUI may move later
            net.to(memory_format=wanted)
    return wanted


class TorchScrfd:
    """An SCRFD .onnx detector run with torch; `detect` gives insightface's boxes and keypoints.

    It computes wherever `net`'s weights are when `detect` runs (loaded on `device`; a memory manager
    may move them between calls).
    """

    def __init__(self, model_file: Path | str, device: torch.device | str = "cpu", det_thresh: float = 0.5) -> None:
        self.model_file = str(model_file)
        self.net, model = onnx_module(model_file, torch.device(device))
        match_layout(self.net, self.device)
        self.layout = scrfd_layout(model, self.model_file)
        self.det_thresh = det_thresh
        self._centres: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where the detector's weights are now."""
        return next(self.net.parameters()).device

    def _centres_for(self, height: int, width: int, stride: int, device: torch.device) -> torch.Tensor:
        key = (height, width, stride, device)
        if key not in self._centres:
            self._centres[key] = anchor_centres(height, width, stride, self.layout.num_anchors, device)
        return self._centres[key]

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Faces in an RGB uint8 image [H, W, 3], fitted into input_size (width, height) pixels.

        Returns dets [K, 5] float32 (x1, y1, x2, y2, score in image pixels) and keypoints [K, 5, 2]
        float32, highest score first, after the score threshold and NMS (insightface `SCRFD.detect`
        with max_num=0).
        """
        device = self.device
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
        blob, det_scale = letterbox(image, input_size)
        outs = self.net(blob.contiguous(memory_format=match_layout(self.net, device)))
        if self.layout.batched:
            outs = tuple(o[0] for o in outs)
        fmc = len(self.layout.strides)
        in_h, in_w = blob.shape[2:]
        scores, boxes, points = [], [], []
        for idx, stride in enumerate(self.layout.strides):
            centres = self._centres_for(in_h // stride, in_w // stride, stride, device)
            score = outs[idx].reshape(-1)
            positive = score >= self.det_thresh
            dist = outs[idx + fmc][positive] * stride
            c = centres[positive]
            boxes.append(torch.cat([c - dist[:, :2], c + dist[:, 2:]], dim=1))
            scores.append(score[positive])
            if self.layout.use_kps:
                offsets = (outs[idx + 2 * fmc][positive] * stride).reshape(-1, 5, 2)
                points.append(c[:, None, :] + offsets)
        score = torch.cat(scores).cpu()
        order = torch.sort(score, descending=True, stable=True).indices
        dets = torch.cat([torch.cat(boxes).cpu() / det_scale, score[:, None]], dim=1)[order]
        kpss = (torch.cat(points).cpu() / det_scale)[order] if points else torch.zeros(len(order), 5, 2)
        keep = nms(dets)
        return dets[keep].numpy().astype(np.float32), kpss[keep].numpy().astype(np.float32)
