"""A broken onnxruntime, as Windows users meet it: put this folder first on PYTHONPATH to make the import fail."""

raise ImportError(
    "DLL load failed while importing onnxruntime_pybind11_state: A dynamic link library (DLL) initialization "
    "routine failed."
)
