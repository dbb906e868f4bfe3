"""The onnxruntime side-by-side check."""

from f2d_core.onnxruntime_check import FIX, installed_onnxruntimes, onnxruntime_conflict


def test_one_runtime_is_fine():
    assert onnxruntime_conflict(["numpy", "onnxruntime-gpu", "onnx"]) is None


def test_cpu_and_gpu_builds_side_by_side_are_reported_with_the_fix():
    message = onnxruntime_conflict(["onnxruntime", "onnxruntime_gpu", "insightface"])
    assert message is not None and "onnxruntime, onnxruntime-gpu" in message and FIX in message


def test_the_real_environment_is_read():
    assert "onnx" not in installed_onnxruntimes()  # the ONNX library is not a runtime
    assert installed_onnxruntimes(["onnxruntime-directml", "onnx"]) == ["onnxruntime-directml"]
