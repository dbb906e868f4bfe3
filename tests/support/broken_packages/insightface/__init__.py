"""A broken insightface (a NumPy ABI mismatch in its extension): first on PYTHONPATH, the import fails."""

raise ImportError(
    "numpy.core.multiarray failed to import (module compiled against ABI version 0x1000009 but this version "
    "of numpy is 0x2000000)"
)
