"""Training the multi-scale identity (MSID) encoder (paper Sec. 3.2) and its per-layer analysis (Fig. 4)."""
