"""A tiny ONNX face recogniser with the structure of insightface's ArcFace IResNet (`w600k_r50.onnx`).

Same interface and op set as the real file: input `input.1` [None, 3, 112, 112] (RGB, normalised as
`(x - 127.5) / 127.5` outside the graph), a stem Conv + BatchNormalization + PRelu, four IResNet
stages (BN -> Conv 3x3 stride 2 -> BN -> PRelu -> Conv 3x3 -> BN, plus a 1x1 stride-2 shortcut, Add)
taking 112 -> 7, then BatchNormalization, Flatten, Gemm to 512 and a final BatchNormalization
(`features`), output [1, 512]. Seeded random weights: it tells images apart, it does not know faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EMBEDDING_DIM = 512
STAGE_WIDTHS = (8, 16, 16, 32)  # real IResNet-50: 64, 128, 256, 512
OPSET, IR_VERSION = 13, 8


class _Graph:
    """Collects nodes and seeded initializers."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def const(self, kind: str, array: np.ndarray) -> str:
        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name=name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stride: int) -> str:
        fan_in = c_in * kernel * kernel
        w = self.const("w", self.rng.standard_normal((c_out, c_in, kernel, kernel)) * np.sqrt(2.0 / fan_in))
        out = self.name("Conv")
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv", [x, w], [out], name=out, kernel_shape=[kernel, kernel], strides=[stride, stride],
                pads=[pad] * 4,
            )
        )  # fmt: skip
        return out

    def batch_norm(self, x: str, channels: int) -> str:
        scale = self.const("bn_scale", 1.0 + 0.1 * self.rng.standard_normal(channels))
        bias = self.const("bn_bias", 0.05 * self.rng.standard_normal(channels))
        mean = self.const("bn_mean", np.zeros(channels))
        var = self.const("bn_var", np.ones(channels))
        out = self.name("BatchNormalization")
        self.nodes.append(
            helper.make_node("BatchNormalization", [x, scale, bias, mean, var], [out], name=out, epsilon=2e-5)
        )
        return out

    def prelu(self, x: str, channels: int) -> str:
        slope = self.const("prelu", np.full((channels, 1, 1), 0.25))
        out = self.name("PRelu")
        self.nodes.append(helper.make_node("PRelu", [x, slope], [out], name=out))
        return out

    def op(self, kind: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(kind)
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out


def build_arcface_recognizer(seed: int = 0) -> onnx.ModelProto:
    """The IResNet-structured recogniser: [N, 3, 112, 112] -> [N, 512]."""
    g = _Graph(seed)
    x = g.prelu(g.batch_norm(g.conv("input.1", 3, STAGE_WIDTHS[0], 3, 1), STAGE_WIDTHS[0]), STAGE_WIDTHS[0])
    c_in = STAGE_WIDTHS[0]
    for c_out in STAGE_WIDTHS:
        y = g.conv(g.batch_norm(x, c_in), c_in, c_out, 3, 2)
        y = g.batch_norm(g.conv(g.prelu(g.batch_norm(y, c_out), c_out), c_out, c_out, 3, 1), c_out)
        shortcut = g.batch_norm(g.conv(x, c_in, c_out, 1, 2), c_out)
        x, c_in = g.op("Add", [y, shortcut]), c_out
    flat = g.op("Flatten", [g.batch_norm(x, c_in)], axis=1)
    fc_w = g.const("fc_w", g.rng.standard_normal((EMBEDDING_DIM, c_in * 49)) / np.sqrt(c_in * 49))
    fc_b = g.const("fc_b", np.zeros(EMBEDDING_DIM))
    fc = g.op("Gemm", [flat, fc_w, fc_b], transB=1)
    features = g.batch_norm(fc, EMBEDDING_DIM)
    g.nodes.append(helper.make_node("Identity", [features], ["683"], name="features"))
    graph = helper.make_graph(
        g.nodes,
        "synthetic_iresnet",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, EMBEDDING_DIM])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="f2d-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_arcface_recognizer(path: Path, seed: int = 0) -> Path:
    """Save the recogniser at `path` (e.g. `.../models/buffalo_l/w600k_r50.onnx`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_arcface_recognizer(seed), str(path))
    return path
