"""Face detection cost: this pack's torch SCRFD path against insightface + onnxruntime, side by side in one run.

    python bench/detection.py [--pack-dir ComfyUI/models/insightface/models/buffalo_l] [--repeats 15]
    python bench/detection.py --device cuda   # the torch path on a GPU (onnxruntime stays on its CPU provider)

Both paths load the same .onnx detector from a pack folder and detect in the same photo (insightface's
t1.jpg, 1280x886, fitted into 640x640), interleaved, median of `--repeats` calls after a warm-up. Without
`--pack-dir` the detector is an SCRFD-10G-shaped stand-in written here as an ONNX graph (random weights,
no real faces): the ResNet stem and stages of scrfd_10g (56/88/88/224 channels, 3/4/2/3 basic blocks), a
56-channel FPN neck and heads of 3 convolutions of 80 channels at strides 8/16/32, 2 anchors, with
keypoints: 9 outputs, buffalo_l's det_10g structure. Needs insightface and onnxruntime (the reference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.faces.face_detection import FaceDetector
from tests.support.photos import GROUP, load_rgb


def scrfd10g_standin() -> object:
    """An ONNX graph with SCRFD-10G's layer shapes and det_10g's inputs/outputs, seeded random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, count = [], [], [0]

    def name(prefix: str) -> str:
        count[0] += 1
        return f"{prefix}_{count[0]}"

    def conv(x: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu=True, bias=0.0, gain=1.0) -> str:
        w, b, y = name("w"), name("b"), name("conv")
        scale = gain * np.sqrt(2.0 / (cin * k * k))
        inits.append(numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * scale).astype(np.float32), w))
        inits.append(numpy_helper.from_array(np.full(cout, bias, np.float32), b))
        pad = k // 2
        attrs = {"kernel_shape": [k, k], "strides": [stride] * 2, "pads": [pad] * 4}
        nodes.append(helper.make_node("Conv", [x, w, b], [y], **attrs))
        if not relu:
            return y
        nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
        return y + "_relu"

    def add(a: str, b: str, relu: bool = False) -> str:
        y = name("add")
        nodes.append(helper.make_node("Add", [a, b], [y]))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [y + "_relu"]))
            return y + "_relu"
        return y

    def basic_block(x: str, cin: int, cout: int, stride: int) -> str:
        shortcut = x if (cin, stride) == (cout, 1) else conv(x, cin, cout, 1, stride, relu=False)
        return add(conv(conv(x, cin, cout, 3, stride), cout, cout, relu=False), shortcut, relu=True)

    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales2"))

    def upsample(x: str) -> str:
        y = name("up")
        nodes.append(
            helper.make_node(
                "Resize", [x, "", "scales2"], [y], mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        )  # fmt: skip
        return y

    x = conv(conv(conv("input.1", 3, 28, stride=2), 28, 28), 28, 56)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    x, cin, features = "pool", 56, []
    for planes, blocks, stride in ((56, 3, 1), (88, 4, 2), (88, 2, 2), (224, 3, 2)):
        for i in range(blocks):
            x, cin = basic_block(x, cin, planes, stride if i == 0 else 1), planes
        features.append((x, planes))
    laterals = [conv(f, c, 56, 1, relu=False) for f, c in features[1:]]  # strides 8, 16, 32
    laterals[1] = add(laterals[1], upsample(laterals[2]))
    laterals[0] = add(laterals[0], upsample(laterals[1]))
    pyramid = [conv(lat, 56, 56) for lat in laterals]
    pyramid[1] = add(pyramid[1], conv(pyramid[0], 56, 56, stride=2))
    pyramid[2] = add(pyramid[2], conv(pyramid[1], 56, 56, stride=2))

    inits += [numpy_helper.from_array(np.array([-1, w], np.int64), f"flat{w}") for w in (1, 4, 10)]
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for level, stride in zip(pyramid, (8, 16, 32), strict=True):
        h = conv(conv(conv(level, 56, 80), 80, 80), 80, 80)
        for head, width, bias in (("score", 1, -8.0), ("bbox", 4, 1.0), ("kps", 10, 0.0)):
            y = conv(h, 80, 2 * width, relu=False, bias=bias, gain=0.01)  # few candidates, as a real one has
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [y], [y + "_sig"]))
                y += "_sig"
            nodes.append(helper.make_node("Transpose", [y], [y + "_nhwc"], perm=[0, 2, 3, 1]))
            out = f"{head}_{stride}"
            nodes.append(helper.make_node("Reshape", [y + "_nhwc", f"flat{width}"], [out]))
            outputs[head].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{stride}", width]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    graph = helper.make_graph(
        nodes, "scrfd10g_standin", [image], outputs["score"] + outputs["bbox"] + outputs["kps"], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def median_seconds(detector: FaceDetector, image: np.ndarray, repeats: int, samples: list[float]) -> None:
    """Append the time of one detect() call to `samples` (called interleaved with the other path)."""
    start = time.perf_counter()
    detector.detect(image)
    samples.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack-dir", type=Path, help="A real insightface pack folder (e.g. .../models/buffalo_l).")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", help="Device of the torch path (default cpu).")
    parser.add_argument("--threads", type=int, help="CPU threads of both paths (default: each library's own).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.pack_dir is None:
        import onnx

        root, pack = Path(tempfile.mkdtemp()), "scrfd10g_standin"
        (root / "models" / pack).mkdir(parents=True)
        onnx.save(scrfd10g_standin(), str(root / "models" / pack / "det_10g.onnx"))
    else:
        root, pack = args.pack_dir.resolve().parent.parent, args.pack_dir.name
    image = load_rgb(GROUP)
    start = time.perf_counter()
    torch_path = FaceDetector(root, pack, device=args.device, retry_det_size=None)
    torch_load = time.perf_counter() - start
    start = time.perf_counter()
    reference = FaceDetector(root, pack, providers=["CPUExecutionProvider"], retry_det_size=None)
    reference_load = time.perf_counter() - start
    if args.threads:
        import onnxruntime

        det_model, options = reference._det_model, onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        det_model.session = onnxruntime.InferenceSession(
            str(det_model.model_file), options, providers=["CPUExecutionProvider"]
        )

    blob = np.random.default_rng(1).uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)
    session = reference._det_model.session
    expected = session.run(None, {session.get_inputs()[0].name: blob})
    with torch.inference_mode():
        got = torch_path._scrfd.net(torch.from_numpy(blob).to(torch_path.device))
    output_diff = max(float(np.abs(g.cpu().numpy() - e).max()) for g, e in zip(got, expected, strict=True))

    timings: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for detector in (torch_path, reference):
        detector.detect(image)  # warm-up
    for _ in range(args.repeats):
        median_seconds(torch_path, image, args.repeats, timings["torch"])
        median_seconds(reference, image, args.repeats, timings["onnxruntime"])
    torch_ms = 1000 * statistics.median(timings["torch"])
    ort_ms = 1000 * statistics.median(timings["onnxruntime"])
    result = {
        "detector": str(torch_path.model_file),
        "image": f"{image.shape[1]}x{image.shape[0]} fitted into 640",
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": args.threads or "default"},
        "torch_device": str(torch_path.device),
        "load_s": {"torch": round(torch_load, 2), "onnxruntime": round(reference_load, 2)},
        "detect_ms_median": {"torch": round(torch_ms, 1), "onnxruntime": round(ort_ms, 1)},
        "torch_over_onnxruntime": round(torch_ms / ort_ms, 2),
        "max_output_difference": output_diff,
        "max_output": max(float(np.abs(e).max()) for e in expected),
        "faces": {"torch": len(torch_path.detect(image)), "onnxruntime": len(reference.detect(image))},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
