"""Tiny ONNX models shaped like an insightface pack, so insightface's real loading and SCRFD code run.

The detector has the structure of buffalo_l's `det_10g.onnx` (input `[1, 3, ?, ?]`, 9 outputs:
scores, box distances and keypoint offsets for strides 8/16/32, 2 anchors per location), and
`insightface.model_zoo.get_model` routes it to `SCRFD` as it routes the real one. What it "detects"
is a bright (red or white) square on a dark background:

- brightness is the red channel only, u = (red + 1) / 2 in [0, 1] (insightface feeds the network RGB
  from the BGR it is given, so a red square is found and a blue one is not only when the caller
  hands insightface BGR), averaged per stride s into s x s cells;
- at every grid point (an SCRFD anchor centre), d = mean u of the 4s x 4s window centred there
  minus 2 x mean u of the ring between that window and the 8s x 8s window around it;
- anchor 0 scores sigmoid(12 (d - 0.5)); any other anchor never fires;
- every anchor predicts the box of its 4s x 4s window and the fixed face layout `KPS_OFFSETS`.

So a square of side 4s (32, 64 or 128 detector pixels) centred on a multiple of s is found with the
box of that square, a brighter square scores higher, a black or uniform image gives nothing, and a
square wider than 8 x 32 = 256 detector pixels is found only once the image is shrunk for a smaller
detection size. The other members (recognition 112 -> 512, landmarks, gender/age) are shape
stand-ins that insightface routes and loads like the real files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
OPSET = 13
IR_VERSION = 8
SCORE_GAIN = 12.0
SCORE_MIDPOINT = 0.5
# Face layout in stride units around the anchor: eye, eye, nose, mouth corner, mouth corner.
KPS_OFFSETS = np.array([[-0.75, -0.5], [0.75, -0.5], [0.0, 0.25], [-0.6, 1.0], [0.6, 1.0]], dtype=np.float32)
DETECTABLE_SIDES = tuple(4 * s for s in STRIDES)  # 32, 64, 128 detector pixels

# The files of a buffalo_l pack (each one's stand-in is in PACK_BUILDERS).
PACK_FILES = ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")


def _const(name: str, array: np.ndarray) -> TensorProto:
    """An initializer tensor."""
    return numpy_helper.from_array(np.asarray(array), name=name)


def _model(nodes: list, inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    """A checked model at the opset and IR version every supported onnxruntime reads."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="f2d-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _window_kernel() -> np.ndarray:
    """8x8 kernel on cells: +1/16 on the inner 4x4 window, -2/48 on the ring around it."""
    kernel = np.full((8, 8), -2.0 / 48.0, dtype=np.float32)
    kernel[2:6, 2:6] = 1.0 / 16.0
    return kernel


def build_scrfd_detector(
    input_size: tuple[int, int] | None = None,
    batched: bool = False,
    strides: tuple[int, ...] = STRIDES,
    num_anchors: int = NUM_ANCHORS,
    regression_gain: float = 0.0,
) -> onnx.ModelProto:
    """The bright-square SCRFD stand-in, with keypoints, in the structure insightface's `SCRFD` reads.

    The defaults give buffalo_l's `det_10g.onnx` structure: 9 outputs (scores, box distances, keypoint
    offsets, each for strides 8/16/32), 2 anchors per location, outputs `[N, C]`, input `[1, 3, ?, ?]`.
    `batched=True` gives outputs `[1, N, C]` (antelopev2's `scrfd_10g_bnkps.onnx`, exported with a
    batch axis, which insightface reads as `batched`); `input_size` (width, height) fixes the input as
    some exports do; `strides=(8, 16, 32, 64, 128), num_anchors=1` gives the 15-output layout.
    Anchor 0 scores the square; every other anchor never fires. `regression_gain` > 0 adds a seeded
    1x1 convolution of the brightness to the box distances and keypoint offsets, so that they follow
    the image (the exact box of a square is then lost; comparisons of decoders use it).
    """
    nodes, inits = [], []
    # u = (x_red + 1) / 2, x being insightface's (pixel - 127.5) / 128 in RGB order.
    inits += [_const("gray_w", np.array([0.5, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1))]
    inits += [_const("gray_b", np.array([0.5], np.float32))]
    nodes.append(helper.make_node("Conv", ["input.1", "gray_w", "gray_b"], ["u"], name="Conv_gray"))

    score_w = np.zeros((num_anchors, 1, 8, 8), np.float32)
    score_w[0, 0] = SCORE_GAIN * _window_kernel()
    score_b = np.full(num_anchors, -30.0, np.float32)
    score_b[0] = -SCORE_GAIN * SCORE_MIDPOINT
    lead = [1] if batched else []
    inits += [_const("score_w", score_w), _const("score_b", score_b)]
    for width in (1, 4, 10):
        inits += [_const(f"flat{width}", np.array([*lead, -1, width], np.int64))]
    rng = np.random.default_rng(7)
    for width in (4, 10):
        weights = regression_gain * rng.standard_normal((width * num_anchors, 1, 1, 1)).astype(np.float32)
        inits += [_const(f"const_w{width}", weights)]
    # Box distances (left, top, right, bottom) and keypoint offsets, in stride units, per anchor.
    inits += [_const("bbox_b", np.full(4 * num_anchors, 2.0, np.float32))]
    inits += [_const("kps_b", np.tile(KPS_OFFSETS.reshape(-1), num_anchors))]

    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for s in strides:
        cells = f"cells_{s}"
        nodes.append(helper.make_node("AveragePool", ["u"], [cells], kernel_shape=[s, s], strides=[s, s]))
        heads = {
            "score": (["score_w", "score_b"], {"pads": [4, 4, 3, 3], "kernel_shape": [8, 8]}, "flat1"),
            "bbox": (["const_w4", "bbox_b"], {}, "flat4"),
            "kps": (["const_w10", "kps_b"], {}, "flat10"),
        }
        for head, (weights, attrs, flat) in heads.items():
            conv = f"{head}_conv_{s}"
            nodes.append(helper.make_node("Conv", [cells, *weights], [conv], **attrs))
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [f"{conv}_sig"]))
                conv = f"{conv}_sig"
            nhwc = f"{head}_nhwc_{s}"
            nodes.append(helper.make_node("Transpose", [conv], [nhwc], perm=[0, 2, 3, 1]))
            out = f"{head}_{s}"
            nodes.append(helper.make_node("Reshape", [nhwc, flat], [out]))
            width = {"score": 1, "bbox": 4, "kps": 10}[head]
            outputs[head].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [*lead, f"n{s}", width]))

    height, width = ("?", "?") if input_size is None else (input_size[1], input_size[0])
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, height, width])
    graph_outputs = outputs["score"] + outputs["bbox"] + outputs["kps"]
    return _model(nodes, [image], graph_outputs, inits, "synthetic_scrfd")


# The detector structures insightface's SCRFD tells apart (see `build_scrfd_detector`), by the pack
# that ships each: buffalo_l's det_10g and antelopev2's scrfd_10g_bnkps, plus a fixed-input export
# and the 5-stride, 1-anchor, 15-output layout.
DETECTOR_VARIANTS: dict[str, Callable[..., onnx.ModelProto]] = {
    "det_10g": build_scrfd_detector,
    "scrfd_10g_bnkps": lambda **kw: build_scrfd_detector(batched=True, **kw),
    "fixed_640": lambda **kw: build_scrfd_detector(input_size=(640, 640), batched=True, **kw),
    "five_strides": lambda **kw: build_scrfd_detector(strides=(8, 16, 32, 64, 128), num_anchors=1, **kw),
}


def _pooled_head(size: int, grid: int, width: int, seed: int, name: str) -> onnx.ModelProto:
    """Image [1, 3, size, size] -> [1, width]: average over a grid x grid layout, then a fixed Gemm."""
    rng = np.random.default_rng(seed)
    cell = size // grid
    inits = [
        _const("fc_w", (rng.standard_normal((3 * grid * grid, width)) / np.sqrt(3 * grid * grid)).astype(np.float32)),
        _const("fc_b", np.zeros(width, np.float32)),
    ]
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"]),
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])
    return _model(nodes, [image], [out], inits, name)


def build_recognition_model() -> onnx.ModelProto:
    """ArcFace-shaped stand-in: [1, 3, 112, 112] -> [1, 512] embedding."""
    return _pooled_head(112, 4, 512, seed=0, name="synthetic_arcface")


def build_landmark_model(width: int) -> onnx.ModelProto:
    """Landmark stand-in: [1, 3, 192, 192] -> [1, width] (212 = 106 x 2; 3309 is how 1k3d68 reads)."""
    return _pooled_head(192, 1, width, seed=1, name=f"synthetic_landmark_{width}")


def build_genderage_model() -> onnx.ModelProto:
    """Gender/age stand-in: [1, 3, 96, 96] -> [1, 3]."""
    return _pooled_head(96, 2, 3, seed=2, name="synthetic_genderage")


PACK_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "1k3d68.onnx": lambda: build_landmark_model(3309),
    "2d106det.onnx": lambda: build_landmark_model(212),
    "det_10g.onnx": build_scrfd_detector,
    "genderage.onnx": build_genderage_model,
    "w600k_r50.onnx": build_recognition_model,
}


def write_synthetic_pack(root: Path, name: str = "buffalo_l_synthetic", files: Iterable[str] = PACK_FILES) -> Path:
    """Write `root/models/<name>/` with the chosen members of the synthetic pack; return that folder."""
    pack_dir = Path(root) / "models" / name
    pack_dir.mkdir(parents=True, exist_ok=True)
    for file_name in files:
        onnx.save(PACK_BUILDERS[file_name](), str(pack_dir / file_name))
    return pack_dir


Square = tuple[int, int, int, int | tuple[int, int, int]]


def square_image(size: tuple[int, int], squares: Iterable[Square]) -> np.ndarray:
    """A black RGB uint8 image (height, width) with squares (centre x, centre y, side, grey value or RGB)."""
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    for cx, cy, side, value in squares:
        half = side // 2
        image[cy - half : cy + half, cx - half : cx + half] = value
    return image


def expected_box(cx: float, cy: float, side: float) -> np.ndarray:
    """The box the synthetic detector reports for a square it finds: the square itself."""
    half = side / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def expected_kps(cx: float, cy: float, side: float) -> np.ndarray:
    """The 5 keypoints the synthetic detector reports for a square of that side (side = 4 strides)."""
    return np.array([cx, cy], np.float32) + KPS_OFFSETS * (side / 4)


def face_photo(
    texture: np.ndarray,
    size: tuple[int, int] = (640, 640),
    centre: tuple[int, int] = (320, 320),
    side: int = 128,
    shade: int = 0,
) -> np.ndarray:
    """A black photo with one "face" the synthetic detector finds: a square carrying a real photo's texture.

    The square's red channel is saturated (what the detector keys on); green and blue carry `texture`
    (an RGB uint8 photo, resized to the square, brightened by `shade`), so different textures give
    different identities. The square may reach past the photo's border: it is then cut there.
    """
    from PIL import Image

    height, width = size
    half = side // 2
    canvas = square_image((height + 2 * side, width + 2 * side), [(centre[0] + side, centre[1] + side, side, 255)])
    patch = np.asarray(Image.fromarray(texture).resize((side, side))).astype(np.int16) + shade
    top, left = centre[1] + side - half, centre[0] + side - half
    canvas[top : top + side, left : left + side, 1:] = np.clip(patch[:, :, 1:], 0, 255)
    return np.ascontiguousarray(canvas[side : side + height, side : side + width])
