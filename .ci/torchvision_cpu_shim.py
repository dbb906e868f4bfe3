"""CI-only: let the CUDA build of torchvision import on CPU-only torch.

On first `import torchvision`, define the two op schemas its Python code registers fakes for
(`nms`, `qnms`); compiled ops still don't run, which nothing under test needs.
"""

import sys


class _TorchvisionSchemaFinder:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            sys.modules["_torchvision_cpu_shim_lib"] = lib  # keep the library alive
        except RuntimeError:
            pass
        return None


sys.meta_path.insert(0, _TorchvisionSchemaFinder())
