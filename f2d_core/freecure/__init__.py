"""FreeCure (Cai et al., NeurIPS 2025, arXiv 2411.15277) for F2D: foundation-aware self-attention (FASA),
attribute masks from the face parser, and asymmetric prompt guidance (APG). Clean-room, from the paper
and the pack's specification (docs/freecure.md); pure PyTorch."""
